"""Held-out metrics of one-step predictions: error, fit, likelihood and calibration.

Shapes: ``B`` rows, ``D`` predicted dimensions.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def _r2(pred: torch.Tensor, target: torch.Tensor) -> list[float | None]:
    """Coefficient of determination per dimension; None where the target does not vary."""
    sse = (pred - target).square().sum(0)
    sst = (target - target.mean(0)).square().sum(0)
    return [None if t.item() <= 1e-12 else 1.0 - (s / t).item() for s, t in zip(sse, sst)]


@torch.no_grad()
def regression_metrics(mean: torch.Tensor, target: torch.Tensor, var: torch.Tensor | None = None,
                       base: torch.Tensor | None = None) -> dict[str, Any]:
    """Metrics of predictions against targets, per dimension and summarised.

    Args:
        mean: (B, D) predicted means.
        target: (B, D) true values.
        var: (B, D) predicted variances, or None for a point prediction.
        base: (B, D) the current state when predicting a next state: adds R^2 of the
            predicted change (``r2_delta``), the harder number, since next-state R^2
            credits the model for the part of s' that is just s.

    Returns:
        A JSON-friendly dict: ``mse``, ``r2`` (and ``r2_delta``) per dimension, ``r2_min``;
        with ``var``: ``nll`` (mean Gaussian NLL per dimension) and the fraction of
        targets inside the 1- and 2-sigma intervals (``coverage_1sigma``, ``coverage_2sigma``),
        per dimension and as ``*_mean``.
    """
    if mean.shape != target.shape or mean.dim() != 2:
        raise ValueError(f"mean and target must both be (B, D), got {tuple(mean.shape)} and {tuple(target.shape)}")
    mean, target = mean.double(), target.double()
    out: dict[str, Any] = {"rows": len(target)}
    out["mse"] = (mean - target).square().mean(0).tolist()
    out["r2"] = _r2(mean, target)
    out["r2_min"] = min((r for r in out["r2"] if r is not None), default=None)
    if base is not None:
        base = base.double()
        out["r2_delta"] = _r2(mean - base, target - base)
        out["r2_delta_min"] = min((r for r in out["r2_delta"] if r is not None), default=None)
    if var is not None:
        var = var.double().clamp_min(1e-12)
        z = (target - mean).abs() / var.sqrt()
        out["nll"] = (0.5 * (var.log() + (target - mean).square() / var + math.log(2 * math.pi))).mean().item()
        for k in (1, 2):
            cov = (z <= k).double().mean(0)
            out[f"coverage_{k}sigma"] = cov.tolist()
            out[f"coverage_{k}sigma_mean"] = cov.mean().item()
    return out


@torch.no_grad()
def classification_metrics(prob: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
    """Accuracy, precision and recall at 0.5 of predicted probabilities (B,) against 0/1 targets (B,)."""
    pred, target = prob >= 0.5, target.bool()
    tp = (pred & target).sum().item()
    return {
        "rows": len(target),
        "positive_rate": target.double().mean().item(),
        "accuracy": (pred == target).double().mean().item(),
        "precision": tp / max(pred.sum().item(), 1),
        "recall": tp / max(target.sum().item(), 1),
    }


def fmt_metric(metric: float | None) -> str:
    """A metric for people: 4 decimals, or 'n/a' where it is undefined (R^2 of a constant target)."""
    return "n/a" if metric is None else f"{metric:.4f}"
