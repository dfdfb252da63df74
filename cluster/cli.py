"""The ``wm`` command line.

Each subcommand is a function ``run(args) -> dict`` in ``cluster/commands/``;
this module parses arguments, prints the result (one JSON object on stdout with
``--json``, readable lines otherwise) and turns expected errors into a one-line
message and a non-zero exit instead of a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, Callable, Sequence

from cluster.commands import bench as bench_cmds
from cluster.commands import demo as demo_cmds
from cluster.commands import fleet as fleet_cmds
from cluster.commands import learn as learn_cmds
from cluster.commands import mbrl as mbrl_cmds
from cluster.commands import model as model_cmds
from cluster.commands import models as models_cmds
from cluster.commands import plan as plan_cmds
from cluster.commands import serve as serve_cmds
from cluster.commands import sweep as sweep_cmds

EXIT_ERROR, EXIT_USAGE = 1, 2


class UsageError(Exception):
    """Bad command-line arguments (argparse's complaints, raised instead of exiting)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser = _Parser(prog="wm", description="fleetwm: world models and MPC for fleets of agents.",
                     parents=[common])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for register in (model_cmds.register, plan_cmds.register, demo_cmds.register, bench_cmds.register,
                     mbrl_cmds.register, models_cmds.register, learn_cmds.register, serve_cmds.register,
                     fleet_cmds.register, sweep_cmds.register):
        register(sub, common)
    return parser


def _print_human(result: dict[str, Any]) -> None:
    lines = result.pop("_summary", None)
    if lines:
        print("\n".join(lines))
        return
    for key, value in result.items():
        print(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


# Errors a user can cause and fix: one line, no traceback (WM_DEBUG=1 shows the traceback).
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError,
                                                     NotADirectoryError, PermissionError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``wm`` command; returns its exit code.

    With ``--json`` stdout carries the one result object and nothing else: while the command
    runs, whatever else writes to stdout (Ray's driver prints the raylet's warnings there from
    a thread of its own) is sent to stderr.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    out = sys.stdout
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError("wm: missing COMMAND; run `wm --help` to list them")
        handler: Callable[[argparse.Namespace], dict[str, Any]] = args.handler
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            result = handler(args)
    except UsageError as err:
        return _fail(str(err), as_json, EXIT_USAGE, out)
    except EXPECTED_ERRORS as err:
        if os.environ.get("WM_DEBUG"):
            raise
        return _fail(f"wm: error: {err}", as_json, EXIT_ERROR, out)
    except KeyboardInterrupt:
        return _fail("wm: interrupted", as_json, 130, out)
    if as_json:
        result.pop("_summary", None)
        print(json.dumps(result, default=str), file=out, flush=True)
    else:
        _print_human(result)
    return 0


def _fail(message: str, as_json: bool, code: int, out: Any) -> int:
    print(message.splitlines()[0] if message else "wm: error", file=sys.stderr)
    if as_json:
        print(json.dumps({"ok": False, "error": message}), file=out, flush=True)
    return code


def entry() -> None:
    """The ``wm`` console script: :func:`main`, then anything printed while the process winds
    down (Ray's shutdown, its late warnings) goes to stderr, after the result."""
    code = main()
    sys.stdout.flush()
    sys.stdout = sys.stderr
    sys.exit(code)


if __name__ == "__main__":
    entry()
