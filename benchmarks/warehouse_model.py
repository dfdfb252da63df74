"""Multi-agent against per-agent world model: one-step error of the physical state on Warehouse-v1.

Warehouse logs (the "task" fleet controller: traffic and contacts) train the fleet model
(attention over neighbours, their actions included) and today's per-agent ensemble with the
same trainer, seed and split (whole floor episodes held out). Both predict the next physical
state (position, velocity) of every robot of the held-out floor; errors are reported per
dimension as RMSE (m, m/s) and as MSE over the variance of the true change (nMSE: 1 is
"predicts the mean change"), over all rows and over the robots in contact or within one body
length of another agent (centre distance < 4 robot radii).

Target (issue 16): near others, the fleet model's error at least 2x lower than the per-agent model's.
The fleet model keeps improving for tens of epochs on a few floors of logs: short runs
(a couple of floors, a few epochs) understate the gap. The defaults (5 floors of 50 robots,
600 ticks each) train for several minutes per model on two CPU cores.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from benchmarks.common import record
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.fleet_collect import collect_fleet
from worldmodel.envs.warehouse import PHYS_DIMS, ROBOT_RADIUS, WAREHOUSE_ID
from worldmodel.fleet_data import neighbour_actions, warehouse_layout
from worldmodel.model import WorldModel
from worldmodel.splits import split_masks
from worldmodel.training import predict_rows, train_world_model

NEAR = 4 * ROBOT_RADIUS
"""Centre distance below which a robot counts as near another agent (in contact or one body length away)."""
MODELS = {"fleet": "fleet", "per_agent": "ensemble"}
"""Reported name -> ``ModelConfig.dynamics``; both at the default size (5 members, 64 wide)."""
_ROWS_PER_CALL = 8192
"""Test rows predicted per call: bounds the fleet model's (E, B, M + 1, H) activations."""


def nearest_distance(obs: np.ndarray) -> np.ndarray:
    """Each row's centre distance to the nearest sensed agent, inf when none: (B,)."""
    slots = warehouse_layout().slot_view(obs)  # (B, M, 5)
    dist = np.linalg.norm(slots[..., :2], axis=-1)
    return np.where(slots[..., 4] > 0, dist, np.inf).min(-1)


@torch.no_grad()
def predict_phys(model: WorldModel, obs: np.ndarray, actions: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """The ensemble's mean next physical state of every row: (B, P)."""
    extra = model.model_config.dynamics == "fleet"
    out = []
    for lo in range(0, len(obs), _ROWS_PER_CALL):
        part = [torch.as_tensor(x[lo:lo + _ROWS_PER_CALL], device=model.device)
                for x in ((obs, actions, neighbours) if extra else (obs, actions))]
        mean, _ = predict_rows(model.dynamics, *part).moments()  # (b, P) or (b, S)
        out.append(mean[:, :PHYS_DIMS.stop - PHYS_DIMS.start] if extra else mean[:, PHYS_DIMS])
    return torch.cat(out).cpu().numpy()


def errors(pred: np.ndarray, obs: np.ndarray, new_obs: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """RMSE and nMSE per physical dim over ``rows`` (B,) bool; nMSE normalised by the change's variance
    over all rows, so subsets compare on one scale."""
    change_var = (new_obs[:, PHYS_DIMS] - obs[:, PHYS_DIMS]).var(0)  # (P,)
    mse = ((pred - new_obs[:, PHYS_DIMS]) ** 2)[rows].mean(0)  # (P,)
    nmse = mse / change_var
    return {"rows": int(rows.sum()), "rmse": np.sqrt(mse).round(5).tolist(), "nmse": nmse.round(5).tolist(),
            "nmse_mean": round(float(nmse.mean()), 5)}


def run(robots: int, episodes: int, steps: int, epochs: int, seed: int, device: str) -> dict[str, Any]:
    start = time.perf_counter()
    data = collect_fleet(robots, episodes, seed, policy="task", steps=steps)
    collect_s = time.perf_counter() - start
    spec = space_spec(make_env(WAREHOUSE_ID), WAREHOUSE_ID)
    train_cfg = TrainConfig(epochs=epochs, seed=seed, device=device)
    # The trainer's own split (the same for both models): score on its test floors.
    test = split_masks(data, train_cfg.val_fraction, train_cfg.test_fraction, seed)[2]
    rows = data.select(test)
    neighbours = neighbour_actions(data)[test]  # (B, M, A) matched on the whole floor
    near = nearest_distance(rows.obs) < NEAR
    results: dict[str, Any] = {}
    for name, kind in MODELS.items():
        t0 = time.perf_counter()
        model = train_world_model(data, spec, ModelConfig(dynamics=kind), train_cfg)
        seconds = time.perf_counter() - t0
        pred = predict_phys(model, rows.obs, rows.actions, neighbours)
        fit = model.metrics["dynamics"]["fit"]
        results[name] = {"dynamics": kind, "train_seconds": round(seconds, 1), "epochs": fit["epochs"],
                         "flops_per_row": model.dynamics.flops_per_sample(),
                         "all": errors(pred, rows.obs, rows.new_obs, np.ones(len(rows), bool)),
                         "near": errors(pred, rows.obs, rows.new_obs, near)}
    ratio = results["per_agent"]["near"]["nmse_mean"] / max(results["fleet"]["near"]["nmse_mean"], 1e-12)
    return {"robots": robots, "episodes": episodes, "steps": steps, "transitions": len(data),
            "test_rows": len(rows), "near_fraction": round(float(near.mean()), 4), "near_m": NEAR,
            "collect_seconds": round(collect_s, 1), "epochs_max": epochs, "seed": seed, "models": results,
            "near_error_ratio": round(ratio, 3), "target_met": ratio >= 2.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robots", type=int, default=50)
    parser.add_argument("--episodes", type=int, default=5, help="floor episodes (>= 3: train / val / test floors)")
    parser.add_argument("--steps", type=int, default=600, help="ticks per floor episode")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="upper bound; early stopping")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=TrainConfig.device)
    args = parser.parse_args()
    record("warehouse_model", run(args.robots, args.episodes, args.steps, args.epochs, args.seed, args.device))


if __name__ == "__main__":
    main()
