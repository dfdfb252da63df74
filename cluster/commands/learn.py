"""`wm learn`: retrain the world model from fleet logs on a learner actor, once or on a cron schedule.

With ``--schedule`` the detached scheduler also takes the serving engines' drift retrains (``learners.drift``):
at most one per ``--drift-min-interval-s``, never while a retrain runs, each recorded with its cause."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

from cluster.commands.train import add_model_options, configs_from_args
from learners.cron import parse
from learners.settings import DEFAULT_CHECKPOINT_ROOT, DEFAULT_NAME, DriftSettings


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("learn", parents=[common])
    p.add_argument("--data", required=True, metavar="URI", help="trajectory log directory or URI")
    p.add_argument("--registry", required=True, metavar="URI", help="model registry directory or URI")
    p.add_argument("--address", default=None, help="Ray cluster address (default: an embedded local Ray)")
    p.add_argument("--promote", action="store_true", help="promote the candidate when it beats production")
    p.add_argument("--schedule", default=None, metavar="CRON",
                   help='retrain on this UTC cron schedule, e.g. "0 3 * * *" (needs --address)')
    p.add_argument("--scheduler-name", default=DEFAULT_NAME, help="name of the detached scheduler actor")
    p.add_argument("--drift-min-interval-s", type=float, default=DriftSettings.min_interval_s, metavar="S",
                   help="with --schedule: at most one retrain asked for by the servers' drift watch per S seconds "
                        "(default: %(default)g)")
    p.add_argument("--checkpoint-root", default=DEFAULT_CHECKPOINT_ROOT,
                   help="training checkpoints, on the learner's node (a shared mount on a multi-node cluster)")
    p.add_argument("--holdout-fraction", type=float, default=0.2, help="share of the newest episodes held out")
    add_model_options(p, dynamics_by_env=True)
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(handler=run_learn)


def _configs(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The learner's config dicts, validated here so a typo fails before Ray starts."""
    # The device is 'auto' (wm learn has no --device): the learner trains on whatever its actor was given.
    model, train = configs_from_args(args)
    fields = model.to_dict()
    if args.dynamics is None:  # the learner picks the kind for the env its logs record
        del fields["dynamics"]
    return fields, train.to_dict()


def run_learn(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray.exceptions import RayTaskError

    from cluster.runtime import init_ray

    model_cfg, train_cfg = _configs(args)
    if not 0 < args.holdout_fraction < 1:
        raise ValueError(f"--holdout-fraction must be in (0, 1), got {args.holdout_fraction}")
    if args.schedule is not None:
        parse(args.schedule)
        if not args.drift_min_interval_s >= 0:
            raise ValueError(f"--drift-min-interval-s must be >= 0 seconds, got {args.drift_min_interval_s}")
        if args.address in (None, "", "local"):
            raise ValueError("--schedule needs a running cluster (--address): a detached scheduler started on "
                             "this command's embedded Ray would die when the command exits")
    verbose = not args.quiet
    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr)) if verbose else (lambda m: None)
    start = time.perf_counter()
    info = init_ray(args.address, log_to_driver=verbose)
    say(f"connected to Ray at {info.address} ({info.gpus:g} GPU(s))")
    settings = {"model_cfg": model_cfg, "train_cfg": train_cfg, "holdout_fraction": args.holdout_fraction}
    try:
        if args.schedule is not None:
            return _schedule(args, settings, say)
        return _retrain_once(args, settings, say, start)
    except RayTaskError as err:
        # The learner's own error (bad logs, refused registry) reads better than Ray's wrapper.
        cause = err.cause
        raise (cause if isinstance(cause, Exception) else err) from None
    finally:
        if info.started:
            ray.shutdown()


def _retrain_once(args: argparse.Namespace, settings: dict[str, Any], say: Callable[[str], None],
                  start: float) -> dict[str, Any]:
    from learners.learner import retrain_once

    say(f"retraining from {args.data} into {args.registry}")
    out = retrain_once(args.data, args.registry, checkpoint_root=args.checkpoint_root, promote=args.promote,
                       **settings)
    holdout = out["holdout"]
    result: dict[str, Any] = {"command": "learn", "data": args.data, "registry": args.registry, **out,
                              "seconds": round(time.perf_counter() - start, 2)}
    against = (f"production {holdout['production_version']}: {holdout['production']['score']:.4f}"
               if holdout["production"] else "no production version")
    result["_summary"] = [
        f"{'found' if out['existing'] else 'registered'} {out['version']} ({out['stage']}) in {result['seconds']} s",
        f"holdout score {holdout['candidate']['score']:.4f} vs {against} (lower is better)",
        f"promoted: {out['promoted']}" + ("" if holdout["better"] else " (not better than production)"),
    ]
    return result


def _schedule(args: argparse.Namespace, settings: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    import ray

    from learners.schedule import start_scheduler

    handle = start_scheduler(args.schedule, args.data, args.registry, promote=args.promote,
                             name=args.scheduler_name, checkpoint_root=args.checkpoint_root,
                             drift_min_interval_s=args.drift_min_interval_s, **settings)
    status = ray.get(handle.status.remote())
    say(f"scheduler {args.scheduler_name!r} started")
    result: dict[str, Any] = {"command": "learn", "scheduler": args.scheduler_name, **status}
    result["_summary"] = [f"retraining {args.data} into {args.registry} on {args.schedule!r} (UTC) "
                          f"as detached actor {args.scheduler_name!r}; next run {status['next_fire']}"]
    return result
