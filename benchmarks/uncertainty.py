"""Uncertainty: the probabilistic ensemble against MC dropout, on Nav2D-v0 and Pendulum-v1.

Both models have the same width, depth, head, epochs, splits and calibration (one variance scale per
dimension fitted on validation episodes); they differ in where the E members come from: E independent
nets (``ModelConfig()``, the reference) or E dropout masks of one net (``uncertainty='mc_dropout'``).
On the held-out test episodes, on the dims that change: one-step R^2, NLL, 1- and 2-sigma coverage,
and the rank correlation of the predicted std (total, and the members' disagreement alone) with the
actual error. Off the data: the planners' disagreement (members' variance in units of the typical
one-step change, as the fallback gate reads it) on test states shifted towards and past the top of
the logged range, against its value on the test states, and the fraction of rows outside that a gate
at the test rows' 99th percentile would flag. Plus training CPU seconds and one call's CPU time (the
planners' folded form) at N=256 rows and at a planning batch of N x K = 256 x 64 rows. Logs: random
play, as ``benchmarks/model_fit.py`` collects them.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import torch

from benchmarks.common import record
from worldmodel.calibration import fit_var_scale
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.collect import collect
from worldmodel.metrics import regression_metrics
from worldmodel.model import build_dynamics
from worldmodel.training import Fitting, seeded_split, tensors

MODELS = {"ensemble": ModelConfig(), "mc_dropout": ModelConfig(uncertainty="mc_dropout"),
          "mc_dropout_0.05": ModelConfig(uncertainty="mc_dropout", dropout=0.05)}
"""The compared models by row name: the default ensemble (reference), MC dropout at its default rate and at
half of it."""
SHIFTS = (0.05, 0.2, 1.0)
"""Off-data states: test states moved by shift x the logged range (max - min per dim) in every dim: small
shifts take the rows near the edge of the logs past it, 1.0 takes every row out."""
CALL_ROWS = (256, 256 * 64)
"""Rows of one inference call timed: N=256 agents, and N x K = 256 x 64 (a planning step's batch)."""
COLS = ("obs", "actions", "new_obs")
Parts = dict[str, dict[str, torch.Tensor]]


def fit_dynamics(data: Any, spec: Any, model_cfg: ModelConfig, train_cfg: TrainConfig) -> tuple[Any, float, Parts]:
    """Split by episode, fit and calibrate the dynamics as ``wm train`` does (same seed, same split);
    returns the model, its fit-and-calibrate CPU seconds and the split's tensors."""
    _, split = seeded_split(data, train_cfg)  # seeds torch: both models start from one stream
    device = torch.device("cpu")
    parts = {name: tensors(getattr(split, name), device) for name in ("train", "val", "test")}
    model = build_dynamics(spec, model_cfg)
    start = time.process_time()  # CPU time: the machine is shared, wall time measures the others too
    Fitting(train_cfg, device, False, None, None).fit(model, "dynamics", COLS, parts["train"], parts["val"])
    val = parts["val"]
    with torch.no_grad():
        model.var_scale.copy_(fit_var_scale(model(val["obs"], val["actions"]), val["new_obs"]))
    return model, time.process_time() - start, parts


def rank_corr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman correlation of two (B, S) arrays, per dimension then averaged over S."""
    rx, ry = x.argsort(0).argsort(0).double(), y.argsort(0).argsort(0).double()
    rx, ry = rx - rx.mean(0), ry - ry.mean(0)
    return (rx * ry).sum(0).div(rx.square().sum(0).mul(ry.square().sum(0)).sqrt().clamp_min(1e-12)).mean().item()


def disagreement(model: Any, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """The planners' disagreement of each row: members' variance over the typical one-step change, (B,)."""
    means = model(obs, actions).mean  # (E, B, S)
    return (means.var(0, unbiased=False) / model.delta_norm.std.square()).mean(-1)


@torch.no_grad()
def held_out(model: Any, test: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Fit and calibration on the test rows' dims that change, and how well the predicted std ranks the error.

    Nav2D's goal dims are constant: their errors are rounding, and they would dominate NLL and ranks.
    """
    moving = (test["new_obs"] - test["obs"]).std(0) > 1e-6  # (S,)
    pred = model(test["obs"], test["actions"])
    mean, var = (m[:, moving] for m in pred.moments())  # (B, D) each, calibrated
    target = test["new_obs"][:, moving]
    metrics = regression_metrics(mean, target, var, base=test["obs"][:, moving])
    error = (mean - target).abs()
    spread = (pred.mean.var(0, unbiased=False) * pred.scale).sqrt()[:, moving]  # (B, D) the members' part alone
    return {"dims": int(moving.sum()), "r2_min": metrics["r2_min"], "r2_delta_min": metrics["r2_delta_min"],
            "nll": metrics["nll"], "coverage_1sigma": metrics["coverage_1sigma_mean"],
            "coverage_2sigma": metrics["coverage_2sigma_mean"], "std_error_corr": rank_corr(var.sqrt(), error),
            "disagreement_error_corr": rank_corr(spread, error)}


@torch.no_grad()
def off_data(model: Any, parts: Parts) -> dict[str, Any]:
    """Disagreement on test states moved towards and past the logged range's top, per shift in ``SHIFTS``: the
    fraction of moved rows outside the range, the median's ratio to the test states' median, and the fraction
    of the rows outside that a gate at the test states' 99th percentile flags."""
    train, test = parts["train"], parts["test"]
    low, high = train["obs"].min(0).values, train["obs"].max(0).values  # (S,)
    inside = disagreement(model, test["obs"], test["actions"])  # (B,)
    gate = inside.quantile(0.99)
    out = {"median_in": inside.median().item(), "outside": {}, "ratio": {}, "flagged": {}}
    for shift in SHIFTS:
        moved = test["obs"] + shift * (high - low)  # (B, S)
        off = (moved > high).any(-1)  # (B,) rows now outside the logs in some dim
        moved_dis = disagreement(model, moved, test["actions"])
        out["outside"][str(shift)] = off.double().mean().item()
        out["ratio"][str(shift)] = (moved_dis.median() / inside.median()).item()
        out["flagged"][str(shift)] = (moved_dis[off] > gate).double().mean().item() if off.any() else None
    return out


@torch.no_grad()
def inference_us(model: Any, spec: Any, repeats: int) -> dict[str, float]:
    """Median CPU microseconds of one draw of the next state (the planners' folded form) per ``CALL_ROWS`` size."""
    folded, out = model.folded(), {}
    for rows in CALL_ROWS:
        obs, act = torch.randn(rows, spec.obs_dim), torch.rand(rows, spec.act_dim) * 2 - 1
        noise = torch.randn(model.members, rows, spec.obs_dim)
        times = []
        for _ in range(max(10, repeats * 256 // rows)):
            start = time.process_time()
            folded.sample(obs, act, noise)
            times.append(time.process_time() - start)
        out[str(rows)] = float(np.median(times[2:]) * 1e6)  # the first calls warm caches
    return out


def run(envs: list[str], episodes: int, seeds: list[int], repeats: int,
        epochs: int = TrainConfig.epochs) -> dict[str, Any]:
    rows = []
    for env in envs:
        data = collect(env, episodes, seed=0)
        spec = space_spec(make_env(env), env)
        for seed in seeds:
            for name, model_cfg in MODELS.items():
                model, seconds, parts = fit_dynamics(data, spec, model_cfg, TrainConfig(epochs=epochs, seed=seed))
                rows.append({"env": env, "model": name, "seed": seed, "train_cpu_seconds": round(seconds, 2),
                             **held_out(model, parts["test"]), "off_data": off_data(model, parts),
                             "inference_us": inference_us(model, spec, repeats)})
                print(f"{env} {name} seed {seed}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return {"episodes": episodes, "seeds": seeds, "shifts": list(SHIFTS), "call_rows": list(CALL_ROWS),
            "models": {name: cfg.to_dict() for name, cfg in MODELS.items()}, "rows": rows,
            "summary": summarise(rows)}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per env and model, the mean over seeds of every number (nested dicts by key), and min/max of 2-sigma
    coverage and of the off-data ratio at the largest shift."""
    out = []
    for env, name in dict.fromkeys((r["env"], r["model"]) for r in rows):
        group = [r for r in rows if (r["env"], r["model"]) == (env, name)]
        means = _mean(group, exclude=frozenset({"env", "model", "seed"}))
        cov = [r["coverage_2sigma"] for r in group]
        ratio = [r["off_data"]["ratio"][str(SHIFTS[-1])] for r in group]
        out.append({"env": env, "model": name, "seeds": len(group)} | means | {
            "coverage_2sigma_range": [min(cov), max(cov)], "off_data_ratio_range": [min(ratio), max(ratio)]})
    return out


def _mean(group: list[dict[str, Any]], exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The mean of each number over ``group``'s dicts (None where none has one), nested dicts key by key."""
    out: dict[str, Any] = {}
    for k, v in group[0].items():
        values = [g[k] for g in group if g[k] is not None]
        if k not in exclude:
            out[k] = _mean(values) if isinstance(v, dict) else (float(np.mean(values)) if values else None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default="Nav2D-v0,Pendulum-v1")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seeds", default="0,1", help="training seeds (splits and weights); logs use seed 0")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls at 256 rows (fewer for larger calls)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    record("uncertainty", run(args.envs.split(","), args.episodes, [int(s) for s in args.seeds.split(",")],
                              args.repeats))


if __name__ == "__main__":
    main()
