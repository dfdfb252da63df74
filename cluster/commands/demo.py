"""`wm demo`: the main job end to end on Nav2D: collect logs, train a world model, plan for a fleet."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from cluster.commands import model as model_cmds
from cluster.commands import plan as plan_cmds

# The model size and planner settings of the measured Nav2D closed-loop results (README).
PLANNING_MODEL = ["--hidden", "64", "--layers", "2"]
PLANNER = ["--planner", "cem", "--horizon", "20", "--samples", "32", "--iterations", "3"]


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common], help="collect Nav2D logs, train a world model, plan with it")
    p.add_argument("--out", default="runs/demo", help="working directory (logs/ and model/ are written here)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--agents", type=int, default=32, help="agents planned for together in the closed loop")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run_demo)


def _run(argv: list[str]) -> dict[str, Any]:
    """Run one `wm` subcommand in process, parsed with its real defaults."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true")
    parser = argparse.ArgumentParser(prog="wm")
    sub = parser.add_subparsers(dest="command")
    for register in (model_cmds.register, plan_cmds.register):
        register(sub, common)
    args = parser.parse_args(argv)
    result = args.handler(args)
    result.pop("_summary", None)
    return result


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    logs, model_dir = out / "logs", out / "model"
    if logs.exists():
        raise FileExistsError(f"{logs} already exists; pass another --out or remove it")
    say = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    quiet = ["--json"] if args.json else []
    start = time.perf_counter()
    say(f"[1/3] collecting {args.episodes} random Nav2D episodes into {logs}")
    collected = _run(["collect", "--env", "Nav2D-v0", "--episodes", str(args.episodes), "--out", str(logs),
                      "--seed", str(args.seed), *quiet])
    say(f"[2/3] training a dynamics ensemble, reward and termination models into {model_dir}")
    trained = _run(["train", "--data", str(logs), "--out", str(model_dir), "--seed", str(args.seed), *PLANNING_MODEL,
                    *quiet])
    say(f"[3/3] planning for {args.agents} agents at once with CEM on the learned model, no-fly zones on")
    evaluated = _run(["eval", "--model", str(model_dir), "--agents", str(args.agents), "--episodes",
                      str(args.agents), "--no-fly-zones", "2", "--seed", str(args.seed + 1), *PLANNER, *quiet])
    dyn = trained["metrics"]["dynamics"]
    result = {"command": "demo", "collect": collected, "train": trained, "eval": evaluated,
              "seconds": round(time.perf_counter() - start, 1)}
    result["_summary"] = [
        f"fleetwm demo: {collected['episodes']} random episodes, {collected['transitions']} transitions logged",
        f"world model v{trained['version']}: test R^2 min {dyn['r2_min']:.4f}, "
        f"2-sigma coverage {dyn['coverage_2sigma_mean']:.3f}, reward R^2 {trained['metrics']['reward']['r2'][0]:.4f}",
        f"closed loop: {evaluated['episodes']} episodes, success {evaluated['success_rate']:.0%}, "
        f"{evaluated['violations']} steps in no-fly zones, {evaluated['fallbacks']} fallbacks",
        f"planning {evaluated['plan_ms_mean']:.1f} ms per step for {args.agents} agents "
        f"(p99 {evaluated['plan_ms_p99']:.1f}), {evaluated['plans_per_s']:.0f} plans/s",
        f"plots: {trained['png']}; done in {result['seconds']} s",
    ]
    return result
