"""`wm models evaluate VERSION_OR_DIR --data LOGS`: a model's prediction error and calibration by horizon on any logs.

The scoring is ``worldmodel.evaluation`` (no Ray); this module resolves the model, reads the
logs, reports progress and draws the ``--png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worldmodel.evaluation_config import EvalConfig

if TYPE_CHECKING:
    from worldmodel.evaluation import Evaluation
    from worldmodel.model import WorldModel

_DEFAULTS = EvalConfig()


def add_evaluate_options(p: argparse.ArgumentParser) -> None:
    """The options of `wm models evaluate`, defaulting to ``EvalConfig``'s fields."""
    p.add_argument("ref", metavar="VERSION_OR_DIR",
                   help='a model directory, or with --registry a version, a stage ("production") or "latest"')
    p.add_argument("--data", required=True, metavar="LOGS", help="log directory or URI to score on")
    p.add_argument("--registry", default=None, metavar="URI", help="registry directory or URI")
    p.add_argument("--horizon", type=int, default=_DEFAULTS.horizon, help="open-loop steps (default: %(default)s)")
    p.add_argument("--particles", type=int, default=_DEFAULTS.particles,
                   help="particles per member of a probabilistic model (default: %(default)s)")
    p.add_argument("--stride", type=int, default=_DEFAULTS.stride,
                   help="steps between rollout starts in an episode (default: the horizon)")
    p.add_argument("--max-windows", type=int, default=_DEFAULTS.max_windows,
                   help="rollouts at most, spread over the logs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="seed of the particles (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto (a GPU when one is visible), cpu, cuda:1, ... "
                   "(default: %(default)s)")
    p.add_argument("--png", default=None, metavar="PATH", help="draw error and interval coverage by horizon")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(handler=run_evaluate)


def _load(args: argparse.Namespace) -> tuple[WorldModel, str]:
    """The model ``args.ref`` names and where it came from: a directory, else a registered version."""
    from worldmodel.artifact import load_model
    from worldmodel.device import resolve_device
    from worldmodel.registry import ModelRegistry

    device = resolve_device(args.device)
    if Path(args.ref).is_dir():
        return load_model(args.ref, device), str(args.ref)
    if args.registry is None:
        raise ValueError(f"{args.ref!r} is not a model directory; pass --registry URI to evaluate a registered "
                         f"version or stage")
    registry = ModelRegistry(args.registry)
    version = registry.get(args.ref).version
    return registry.load(version, device), f"{args.registry} version {version}"


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from worldmodel.data.reader import read_env_id, read_transitions, require_log_files
    from worldmodel.evaluation import evaluate

    cfg = EvalConfig(horizon=args.horizon, particles=args.particles, stride=args.stride,
                     max_windows=args.max_windows, seed=args.seed)  # invalid values raise before any work
    log = (lambda m: None) if args.quiet else (lambda m: print(f"wm models evaluate: {m}", file=sys.stderr))
    torch.set_num_threads(min(torch.get_num_threads(), 4))  # scoring is small; leave cores to the fleet
    model, source = _load(args)
    log(f"model {model.version} ({model.model_config.dynamics}) from {source}")
    _, _, files = require_log_files(args.data)
    env_id = read_env_id(args.data, files=files)
    if env_id and model.spec.env_id and env_id != model.spec.env_id:
        raise ValueError(f"the logs in {args.data} are {env_id}, the model {model.version} is for {model.spec.env_id}")
    data = read_transitions(args.data, files=files)
    log(f"read {len(data)} rows from {len(files)} file(s) in {args.data}")
    scored = evaluate(model, data, cfg, log)
    result: dict[str, Any] = {"command": "models evaluate", "model": source, "data": args.data,
                              "config": dataclasses.asdict(cfg), **scored.to_dict()}
    if args.png:
        from cluster.commands.models_report import plot_by_horizon  # matplotlib: only when a plot is asked for

        result["png"] = str(plot_by_horizon(scored, Path(args.png), f"{model.version} on {args.data}"))
    result["_summary"] = _summary(scored, source, args.data) + ([f"wrote {result['png']}"] if args.png else [])
    return result


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _summary(scored: Evaluation, source: str, data: str) -> list[str]:
    one = scored.one_step
    lines = [f"{source} ({scored.kind}) on {data}: {scored.rows} rows, {scored.episodes} episodes",
             f"one-step: mse {_fmt(one.mse)}, distance {_fmt(one.distance)}, nll {_fmt(one.nll)}, "
             f"1-sigma coverage {_fmt(one.coverage_1sigma)} (0.683 calibrated), reward mse {_fmt(one.reward_mse)}"]
    if scored.multi_step_skipped:
        return [*lines, f"multi-step skipped: {scored.multi_step_skipped}"]
    lines += [f"open loop, {scored.windows} rollouts of the logged actions from logged starts:",
              f"{'h':>4} {'mse':>10} {'distance':>10} {'nll':>10} {'cov 1sig':>9} {'reward mse':>11}"]
    lines += [f"{h:>4} {_fmt(s.mse):>10} {_fmt(s.distance):>10} {_fmt(s.nll):>10} "
              f"{_fmt(s.coverage_1sigma):>9} {_fmt(s.reward_mse):>11}" for h, s in enumerate(scored.by_horizon, 1)]
    return lines
