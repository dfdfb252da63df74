"""One-step model fit: `wm collect` 100 random episodes, then `wm train`, on Nav2D-v0 and Pendulum-v1.

Targets (foundation issue): held-out R^2 >= 0.99 on every state dimension and 2-sigma coverage in
[0.90, 0.99]. The reference in the same run is the original article's model, a single 64-unit
deterministic MLP, trained on the same logs with the same splits.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import record, wm

MODELS = {
    "fleetwm ensemble (5 x 64x2, NLL, calibrated)": [],
    "article MLP (1 x 64x2, MSE)": ["--dynamics", "mlp", "--ensemble-size", "1", "--hidden", "64", "--layers", "2"],
}


def run(envs: list[str], episodes: int, seed: int) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for env in envs:
            logs = Path(tmp, env, "logs")
            wm("collect", "--env", env, "--episodes", str(episodes), "--out", str(logs), "--seed", str(seed))
            for i, (name, flags) in enumerate(MODELS.items()):
                out = wm("train", "--data", str(logs), "--out", str(Path(tmp, env, f"model{i}")), "--seed",
                         str(seed), *flags)
                dyn = out["metrics"]["dynamics"]
                rows.append({
                    "env": env, "model": name, "train_seconds": out["seconds"],
                    "transitions": out["metrics"]["data"]["transitions"],
                    "r2_min": dyn["r2_min"], "r2": dyn["r2"], "r2_delta": dyn["r2_delta"],
                    "coverage_1sigma": dyn.get("coverage_1sigma_mean"),
                    "coverage_2sigma": dyn.get("coverage_2sigma_mean"),
                    "coverage_2sigma_per_dim": dyn.get("coverage_2sigma"),
                    "nll": dyn.get("nll"), "reward_r2": out["metrics"]["reward"]["r2"][0],
                    "targets_met": dyn["r2_min"] >= 0.99 and dyn.get("coverage_2sigma_mean") is not None
                    and 0.90 <= dyn["coverage_2sigma_mean"] <= 0.99,
                })
    return {"episodes": episodes, "seed": seed, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--envs", default="Nav2D-v0,Pendulum-v1")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    record("model_fit", run(args.envs.split(","), args.episodes, args.seed))


if __name__ == "__main__":
    main()
