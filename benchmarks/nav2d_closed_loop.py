"""Nav2D closed loop on a learned model: success, no-fly-zone violations and planning speed.

`wm collect` 100 random episodes, `wm train` the planning model (5 x 64x2 ensemble, 64x2 reward),
then `wm eval` 100 agents in lockstep (learned dynamics and learned reward). Targets (planner
issue): success >= 99% and zero violations with zones on. Each row counts the first episodes to
start, run to their end (failures last until the time limit, so counting the first to end would
miss them); 1,000 episodes tell 99% from 98%.

The reference in the same run is the original article's stack: one deterministic 64x2 MLP,
gradient MPC with horizon 15 and one restart, one agent per planning call.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import record, wm

# PETS' CEM: white noise at half the action range (CEM's own default is iCEM's coloured noise).
WHITE = ["--planner-opt", "noise_beta=0", "--planner-opt", "init_std=0.5"]
PLANNER = ["--planner", "cem", "--horizon", "20", "--samples", "32", "--iterations", "3", *WHITE]
PETS_1_ROUND = ["--planner", "cem", "--horizon", "20", "--samples", "32", "--iterations", "1", *WHITE]
# What `wm eval` and the fleet endpoint do by default (planners.config.PlanConfig and CEMConfig): one
# CEM round per step, warm-started from the previous step's plan, horizon 30, sampling iCEM's coloured
# noise as wide as the action box.
SERVED_PLANNER: list[str] = []
ICEM_H20 = ["--horizon", "20"]
MODEL: list[str] = []  # the default model: a 5 x 64x2 ensemble with a 64x2 reward model
ARTICLE_MODEL = ["--dynamics", "mlp", "--ensemble-size", "1", "--hidden", "64", "--layers", "2"]
ARTICLE_PLANNER = ["--planner", "gradient", "--horizon", "15", "--samples", "1", "--iterations", "10",
                   "--propagation", "expectation"]
KEYS = ("episodes", "success_rate", "violations", "episodes_with_violation", "fallbacks", "mean_return",
        "plan_ms_mean", "plan_ms_p99", "plans_per_s")


def run(episodes: int, agents: int, reference_episodes: int, seed: int, long_episodes: int) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        logs = str(Path(tmp, "logs"))
        wm("collect", "--env", "Nav2D-v0", "--episodes", "100", "--out", logs, "--seed", str(seed))
        ours = wm("train", "--data", logs, "--out", str(Path(tmp, "ours")), *MODEL)
        article = wm("train", "--data", logs, "--out", str(Path(tmp, "article")), *ARTICLE_MODEL)
        runs = (("CEM H30 K32 x1, iCEM noise (served)", SERVED_PLANNER, "2", long_episodes),
                ("CEM H30 K32 x1, iCEM noise (served)", SERVED_PLANNER, "0", episodes),
                ("CEM H20 K32 x1, iCEM noise", ICEM_H20, "2", episodes),
                ("CEM H20 K32 x3, white noise (PETS)", PLANNER, "2", episodes),
                ("CEM H20 K32 x1, white noise (PETS)", PETS_1_ROUND, "2", episodes))
        for name, planner, zones, count in runs:
            out = wm("eval", "--model", ours["model_dir"], "--agents", str(agents), "--episodes", str(count),
                     "--no-fly-zones", zones, "--seed", str(seed + 1), *planner)
            rows.append({"stack": f"fleetwm: {name}, 5x64x2 ensemble, batched", "zones": int(zones),
                         "agents": agents, "settings": out["settings"],
                         "planner_settings": out["planner_settings"]} | {k: out[k] for k in KEYS})
        out = wm("eval", "--model", article["model_dir"], "--agents", "1", "--episodes", str(reference_episodes),
                 "--no-fly-zones", "0", "--seed", str(seed + 1), *ARTICLE_PLANNER)
        rows.append({"stack": "article: gradient MPC H15, 1x64x2 MLP, one agent per call", "zones": 0,
                     "agents": 1, "settings": out["settings"]} | {k: out[k] for k in KEYS})
    met = [r["stack"] for r in rows[:-1] if r["zones"] and r["success_rate"] >= 0.99 and r["violations"] == 0]
    return {"rows": rows, "target_met": bool(met), "settings_meeting_target": met,
            "model_r2_min": ours["metrics"]["dynamics"]["r2_min"],
            "reward_r2": ours["metrics"]["reward"]["r2"][0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=400)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--reference-episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--long-episodes", type=int, default=1000, help="episodes of the served setting, zones on")
    args = parser.parse_args()
    record("nav2d_closed_loop", run(args.episodes, args.agents, args.reference_episodes, args.seed,
                                    args.long_episodes))


if __name__ == "__main__":
    main()
