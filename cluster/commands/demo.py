"""`wm demo`: the main job end to end on Nav2D: collect fleet logs, train a world model, report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from cluster.commands import model as model_cmds


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common], help="collect Nav2D logs, train a world model, report")
    p.add_argument("--out", default="runs/demo", help="working directory (logs/ and model/ are written here)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    logs, model_dir = out / "logs", out / "model"
    if logs.exists():
        raise FileExistsError(f"{logs} already exists; pass another --out or remove it")
    say = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    start = time.perf_counter()
    say(f"[1/2] collecting {args.episodes} random Nav2D episodes into {logs}")
    quiet = ["--json"] if args.json else []
    collected = model_cmds.run_collect(model_cmds.parse(
        ["collect", "--env", "Nav2D-v0", "--episodes", str(args.episodes), "--out", str(logs),
         "--seed", str(args.seed), *quiet]))
    say(f"[2/2] training dynamics ensemble + reward + termination models into {model_dir}")
    trained = model_cmds.run_train(model_cmds.parse(
        ["train", "--data", str(logs), "--out", str(model_dir), "--seed", str(args.seed), *quiet]))
    collected.pop("_summary")
    summary = trained.pop("_summary")
    result = {"command": "demo", "collect": collected, "train": trained,
              "seconds": round(time.perf_counter() - start, 1)}
    result["_summary"] = [f"fleetwm demo: {collected['episodes']} episodes, {collected['transitions']} transitions",
                          *summary, f"done in {result['seconds']} s"]
    return result
