"""`wm tune`: a Ray Tune sweep over the world model's settings on fleet logs; the best may become a candidate."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tune.space import DEFAULT_SPACE, GRACE_EPOCHS, HOLDOUT_FRACTION, SCHEDULER, SCHEDULERS, describe
from worldmodel.config import TrainConfig

if TYPE_CHECKING:
    from tune.sweep import SweepResult

DEFAULT_OUT = "~/ray_results/fleetwm-tune"
"""Where runs go unless --out says otherwise (beside Tune's own default, ~/ray_results)."""

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("tune", parents=[common])
    p.add_argument("--data", required=True, metavar="LOGS", help="trajectory log directory or URI")
    p.add_argument("--samples", type=int, required=True, metavar="N", help="trials to run")
    p.add_argument("--registry", default=None, metavar="URI",
                   help="register the best trial's model in this registry as a candidate")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help="runs directory; this run goes to DIR/sweep-... (a shared mount on a multi-node cluster)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs,
                   help="most epochs per fit (early stopping usually ends sooner)")
    p.add_argument("--seed", type=int, default=TrainConfig.seed, help="seeds the search and every trial's training")
    p.add_argument("--space", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="try these values of a model or training setting (one value fixes it), replacing the default "
                        f"space's entry; repeatable. Default space: {describe(DEFAULT_SPACE)}")
    p.add_argument("--holdout-fraction", type=float, default=HOLDOUT_FRACTION, help="share of the newest episodes held out")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=SCHEDULER,
                   help="asha (default): stop trials whose dynamics validation loss trails the others' at the same "
                        "epoch; fifo: run every trial to its end")
    p.add_argument("--grace-epochs", type=int, default=GRACE_EPOCHS, metavar="N",
                   help="dynamics epochs every trial runs before ASHA may stop it")
    p.add_argument("--address", default=None, help="Ray cluster address (default: an embedded local Ray)")
    p.add_argument("--png", default=None, metavar="PNG", help="draw each trial's holdout score against its settings")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(handler=run_tune)


def parse_value(text: str) -> Any:
    """A --space value as the config field wants it: int, float, bool or string."""
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_values(item: str) -> tuple[str, list[Any]]:
    """A ``KEY=V1,V2,...`` option: (the key as a field name, its values).

    Raises:
        ValueError: an option that is not ``KEY=V1[,V2...]``.
    """
    key, sep, values = item.partition("=")
    parsed = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not parsed:
        raise ValueError(f"--space {item!r}: expected KEY=V1[,V2...], e.g. hidden=64,128")
    return key.strip().replace("-", "_"), parsed


def parse_space(items: list[str]) -> dict[str, Any]:
    """``KEY=V1,V2,...`` options as a search space: the default space with each KEY a choice of its values.

    Raises:
        ValueError: an option that is not ``KEY=V1[,V2...]``.
    """
    from ray import tune  # Ray loads only when a sweep runs, so `wm tune --help` answers at once

    from tune.sweep import default_space

    space = default_space()
    for item in items:
        key, parsed = parse_values(item)
        space[key] = parsed[0] if len(parsed) == 1 else tune.choice(parsed)
    return space


def run_tune(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from cluster.commands.tune_report import plot_sweep
    from cluster.runtime import init_ray
    from learners.retrain import read_held_out
    from tune.sweep import SweepConfig, SweepFailed, register_best, run_sweep
    from worldmodel.data.reader import require_log_files

    start = time.perf_counter()
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    # Settings and logs are checked before Ray starts, so bad input fails in a moment.
    sweep = SweepConfig(samples=args.samples, space=parse_space(args.space),
                        train=TrainConfig(epochs=args.epochs, seed=args.seed), holdout_fraction=args.holdout_fraction,
                        scheduler=args.scheduler, grace_epochs=args.grace_epochs)
    _, _, files = require_log_files(args.data)
    verbose = not args.quiet
    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr, flush=True)) if verbose else (lambda m: None)
    info = init_ray(args.address)
    say(f"connected to Ray at {info.address} ({info.gpus:g} GPU(s))")
    try:
        logs = read_held_out(args.data, sweep.holdout_fraction, files=files)
        say(f"read {logs.rows} transitions of {logs.env_id} from {args.data}; holding out {len(logs.holdout)} "
            f"rows of the newest episodes; running {sweep.samples} trial(s)")
        # Tune prints its experiment's settings on stdout whatever its verbosity; stdout is for the answer.
        with contextlib.redirect_stdout(sys.stderr):
            try:
                result = run_sweep(logs, sweep, args.out, say=say)
            except SweepFailed as err:  # one line for the user (WM_DEBUG=1 shows the trial's traceback)
                raise ValueError(str(err)) from err
        registered = None
        if args.registry:
            version, existing = register_best(result, logs, sweep, args.registry)
            registered = {"version": version.version, "stage": version.stage, "existing": existing,
                          "holdout": version.holdout}
            say(f"{'found' if existing else 'registered'} the best trial as {version.version} ({version.stage}) "
                f"in {args.registry}")
    finally:
        if info.started:
            ray.shutdown()
    png = None
    if args.png:
        png = str(plot_sweep([t.to_dict() for t in result.trials], result.best.trial_id, Path(args.png),
                             title=f"{logs.env_id}: {len(result.trials)} trials, holdout score per setting"))
    out: dict[str, Any] = {"command": "tune", "data": args.data, "samples": sweep.samples, **result.to_dict(),
                           "registered": registered, "png": png, "seconds": round(time.perf_counter() - start, 2)}
    out["_summary"] = _table(result) + [f"run directory: {result.run_dir}"]
    if result.stopped:
        out["_summary"].append(f"stopped early by ASHA: {len(result.stopped)} of {sweep.trials} trials "
                               f"({', '.join(t.trial_id for t in result.stopped)})")
    if registered:
        out["_summary"].append(f"{'found' if registered['existing'] else 'registered'} {registered['version']} "
                               f"({registered['stage']}) in {args.registry}")
    if png:
        out["_summary"].append(f"plot: {png}")
    return out


def _table(result: SweepResult) -> list[str]:
    """The trials as aligned columns, best first; the best marked with *."""
    from tune.sweep import format_setting

    keys = sorted({k for t in result.trials for k in t.config})
    rows = [["", "trial", *keys, "score", "dynamics", "reward", "s"]]
    for t in sorted(result.trials, key=lambda t: t.score):
        rows.append(["*" if t is result.best else "", t.trial_id, *(format_setting(t.config[k]) for k in keys),
                     f"{t.score:.4f}", f"{t.dynamics_nmse:.4f}", f"{t.reward_nmse:.4f}", f"{t.seconds:.1f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
