"""The ``wm`` command line.

Each command is a module of its own name in ``cluster/commands/`` (``wm eval`` is
``cluster/commands/eval.py``) with ``register(sub, common)``, which adds its parser and sets
``handler``, a function ``run(args) -> dict``. This module parses arguments, prints the result
(one JSON object on stdout with ``--json``, readable lines otherwise) and turns expected errors
into a one-line message and a non-zero exit instead of a traceback.

Only the command being run is imported (its heavy imports, torch and Ray, wait inside its
handler), so ``wm --help``, ``wm COMMAND --help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from typing import Any, Callable, Sequence

EXIT_ERROR, EXIT_USAGE = 1, 2


class UsageError(Exception):
    """Bad command-line arguments (argparse's complaints, raised instead of exiting)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


COMMANDS: dict[str, str] = {
    "collect": "run a policy in an env and write trajectory logs",
    "train": "train dynamics + reward models from logs",
    "info": "show a model directory's version, config and metrics",
    "eval": "run N envs in lockstep, planning for all in one call",
    "bench": "measure throughput (`wm bench plan`: plans/s for N agents per call)",
    "mbrl": "model-based RL (PETS): train a model, plan, repeat",
    "models": "list, inspect, promote, roll back, register, evaluate and A/B-test models",
    "reward": "train, register and list reward models apart from the dynamics (a request names one)",
    "learn": "retrain from logs on a learner actor, compare with production, register",
    "policy": "train a policy inside a world model with RLlib PPO (`wm policy train`), saved beside it",
    "tune": "sweep world-model settings with Ray Tune, scored on the newest episodes",
    "serve": "serve next actions for a fleet over HTTP (Ray Serve)",
    "fleet": "drive N simulated agents closed loop through a fleet endpoint (load test)",
    "ingest": "log transitions from a Redis Stream into the Arrow logs until SIGTERM/Ctrl-C",
    "demo": "on a local Ray: simulate a fleet, learn a model, serve it, drive a fleet over HTTP",
    "export": "export a model's networks to ONNX or TorchScript, checked equal to torch",
}
"""Every ``wm`` command and its one-line help; command NAME lives in ``cluster.commands.NAME``."""


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The ``wm`` parser: the full options of the command named in ``argv``, one line for each other.

    Args:
        argv: the arguments to be parsed; the first that is not an option names the command.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser = _Parser(prog="wm", description="fleetwm: world models and MPC for fleets of agents.",
                     parents=[common])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, help_line in COMMANDS.items():
        if name == chosen:
            importlib.import_module(f"cluster.commands.{name}").register(sub, common)
            sub.choices[name].description = sub.choices[name].description or help_line
        else:
            sub.add_parser(name, help=help_line)
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
        args = build_parser(argv).parse_args(argv)
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
