"""The PNG of `wm tune`: each trial's holdout score against each setting it drew."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from cluster.commands.report import plt, save_figure  # pyplot with the files-only backend set


def plot_sweep(trials: list[dict[str, Any]], best_id: str, path: Path, title: str) -> Path:
    """One panel per swept setting: every trial's holdout score (lower is better) at the value it drew.

    Args:
        trials: ``TrialResult.to_dict()`` of each trial (``config`` holds its settings, ``score`` its score).
        best_id: the best trial's id, drawn as a star.
        path: the PNG to write.
        title: the figure's title.
    """
    keys = sorted({k for t in trials for k in t["config"]})
    # A setting held fixed says nothing about the score; drawn only when nothing varied.
    varied = [k for k in keys if len({repr(t["config"][k]) for t in trials}) > 1]
    keys = varied or keys
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [t["config"][key] for t in trials]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        # Settings that are not numbers (activation, dynamics kind) get one column each, in sorted order.
        labels = sorted({str(v) for v in values})
        xs = values if numeric else [labels.index(str(v)) for v in values]
        scores = [t["score"] for t in trials]
        ax.scatter(xs, scores, color="C0", alpha=0.7)
        best = [(x, s) for x, s, t in zip(xs, scores, trials) if t["trial_id"] == best_id]
        ax.scatter(*zip(*best), marker="*", s=220, color="C3", edgecolor="k", label="best", zorder=3)
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        elif all(isinstance(v, int) for v in values):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        elif min(values) > 0:
            ax.set_xscale("log")  # real-valued settings (learning rates, decay) are swept over decades
        ax.set(xlabel=key, ylabel="holdout score (lower is better)")
        ax.legend()
    return save_figure(fig, path, title)
