"""PNG reports: what people would rather see than read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig: plt.Figure, path: Path, title: str | None = None) -> Path:
    """Write ``fig`` to ``path`` as a PNG (under ``title`` when given), close it, and return ``path``."""
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def draw_tracks(ax: plt.Axes, tracks: list[dict[str, Any]]) -> None:
    """Nav2D paths, one colour per agent: start o, goal *, its no-fly zones shaded.

    Args:
        ax: the axes to draw on.
        tracks: per agent {"xy": (T, 2) positions, "goal": (2,), "zones": (Z, 3)}, and optionally
            "success": bool (False draws the path dotted: goal not reached).
    """
    for i, track in enumerate(tracks):
        colour = f"C{i % 10}"
        for cx, cy, r in track["zones"]:
            if r > 0:
                ax.add_patch(plt.Circle((cx, cy), r, color=colour, alpha=0.12))
        xy = track["xy"]
        ax.plot(xy[:, 0], xy[:, 1], color=colour, lw=1.2, ls="-" if track.get("success", True) else ":")
        ax.plot(*xy[0], "o", color=colour, ms=4)
        ax.plot(*track["goal"], "*", color=colour, ms=11, mec="k", mew=0.5)


def plot_closed_loop(tracks: list[dict[str, Any]], plan_ms: list[float], path: Path, title: str) -> Path:
    """Nav2D paths of a few agents' first episodes (with goals and no-fly zones) and planning latency.

    Args:
        tracks: per agent, see ``draw_tracks``.
        plan_ms: wall time of every planning call.
    """
    fig, (paths, lat) = plt.subplots(1, 2, figsize=(12, 5.5))
    draw_tracks(paths, tracks)
    paths.set(title="first episode of each agent: start o, goal *, no-fly zones shaded", aspect="equal")
    lat.hist(plan_ms, bins=40, color="C0")
    lat.axvline(float(np.percentile(plan_ms, 99)), color="k", ls="--", lw=0.8, label="p99")
    lat.set(title="planning time per call (all agents at once)", xlabel="ms", ylabel="calls")
    lat.legend()
    return save_figure(fig, path, title)


def plot_training(metrics: dict[str, Any], path: Path, title: str) -> Path:
    """Validation curves, per-dimension R^2 and calibration of a trained world model."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    curves = axes[0]
    for name in ("dynamics", "reward", "termination"):
        part = metrics.get(name)
        if part:
            curves.plot(part["fit"]["val_loss_history"], label=name)
    curves.set(title="validation loss", xlabel="epoch", ylabel="loss")
    curves.legend()

    dyn = metrics["dynamics"]
    dims = range(len(dyn["r2"]))
    nz = lambda xs: [0.0 if x is None else x for x in xs]  # noqa: E731
    fit_ax = axes[1]
    fit_ax.bar([d - 0.2 for d in dims], nz(dyn["r2"]), width=0.4, label="next state")
    fit_ax.bar([d + 0.2 for d in dims], nz(dyn["r2_delta"]), width=0.4, label="change (delta)")
    fit_ax.axhline(0.99, color="k", lw=0.8, ls="--")
    fit_ax.set(title="test R^2 per state dimension", xlabel="dimension", ylim=(min(0.9, *nz(dyn["r2_delta"])), 1.0))
    fit_ax.legend(loc="lower left")

    cal = axes[2]
    if "coverage_2sigma" in dyn:
        cal.bar([d - 0.2 for d in dims], dyn["coverage_1sigma"], width=0.4, label="inside 1 sigma")
        cal.bar([d + 0.2 for d in dims], dyn["coverage_2sigma"], width=0.4, label="inside 2 sigma")
        cal.axhline(0.683, color="C0", lw=0.8, ls="--")
        cal.axhline(0.954, color="C1", lw=0.8, ls="--")
        cal.legend(loc="lower left")
    cal.set(title="calibration on test episodes", xlabel="dimension", ylim=(0, 1.02))
    return save_figure(fig, path, title)
