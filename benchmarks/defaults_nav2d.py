"""A newcomer's Nav2D run with defaults only: `wm collect`, `wm train`, `wm eval --no-fly-zones`.

No planner or model flags: what this measures is what the defaults give (``PlanConfig``, CEM's own
config, ``ModelConfig``). The bar (issue 13): success >= 99.5% and zero no-fly-zone violations over
2,000 episodes, on an eval seed no test uses.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import record, wm

EVAL_SEED = 20261206
"""The eval's seed: used by no test."""
EPISODES = 2000
"""Evaluation episodes: at 99.5% success, 10 failures are allowed."""
BAR_SUCCESS = 0.995


def summarise(collected: dict[str, Any], trained: dict[str, Any], evaluated: dict[str, Any],
              shown: list[str]) -> dict[str, Any]:
    """The benchmark's record from the three commands' JSON answers."""
    met = evaluated["success_rate"] >= BAR_SUCCESS and evaluated["violations"] == 0
    return {"commands": shown, "bar": {"success_rate_min": BAR_SUCCESS, "violations": 0, "met": met},
            "collect": {k: collected[k] for k in ("episodes", "transitions", "seed")},
            "train": {"seconds": trained["seconds"], "dynamics_r2_min": trained["metrics"]["dynamics"]["r2_min"],
                      "reward_r2": trained["metrics"]["reward"]["r2"][0]},
            "eval": {k: v for k, v in evaluated.items() if k not in ("model", "command")}}


def commands(logs: str, model: str, episodes: int = EPISODES, seed: int = EVAL_SEED) -> list[list[str]]:
    """The newcomer's `wm collect`, `wm train` and `wm eval --no-fly-zones`: no setting but where files go
    and how long the evaluation runs."""
    return [["collect", "--env", "Nav2D-v0", "--out", logs], ["train", "--data", logs, "--out", model],
            ["eval", "--model", model, "--no-fly-zones", "--episodes", str(episodes), "--seed", str(seed)]]


def run(episodes: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        argvs = commands(str(Path(tmp, "logs")), str(Path(tmp, "model")), episodes, seed)
        collected, trained, evaluated = (wm(*argv) for argv in argvs)
        shown = [" ".join(["wm", *argv]).replace(tmp, "DIR") for argv in argvs]
    return summarise(collected, trained, evaluated, shown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=EPISODES)
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    args = parser.parse_args()
    record("defaults_nav2d", run(args.episodes, args.seed))


if __name__ == "__main__":
    main()
