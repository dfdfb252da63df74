"""The PNG of `wm models evaluate`: prediction error and interval coverage by horizon."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cluster.commands.report import plt, save_figure  # pyplot with the files-only backend set

if TYPE_CHECKING:
    from worldmodel.evaluation import Evaluation

_NOMINAL = {"coverage_1sigma": 0.683, "coverage_2sigma": 0.954}
"""Coverage of a Gaussian's 1- and 2-sigma intervals: where a calibrated model's lines lie."""


def plot_by_horizon(scored: Evaluation, path: Path, title: str) -> Path:
    """Left: MSE and reward MSE at each open-loop step (the one-step score as a dashed line); right: the share of
    logged values inside the predicted 1- and 2-sigma intervals, against the nominal shares."""
    fig, (err, cov) = plt.subplots(1, 2, figsize=(10, 4))
    steps = range(1, len(scored.by_horizon) + 1)
    err.plot(steps, [s.mse for s in scored.by_horizon], "o-", label="state MSE (open loop)")
    err.plot(steps, [s.reward_mse for s in scored.by_horizon], "s-", label="reward MSE (open loop)")
    err.axhline(scored.one_step.mse, color="C0", ls="--", label="state MSE (one-step, every row)")
    err.set(xlabel="horizon step h", ylabel="mean squared error", yscale="log")
    err.legend()
    for i, (key, nominal) in enumerate(_NOMINAL.items()):
        values = [getattr(s, key) for s in scored.by_horizon]
        if None not in values:
            cov.plot(steps, values, "o-", color=f"C{i}", label=key.replace("_", " "))
        cov.axhline(nominal, color=f"C{i}", ls=":", label=f"{nominal} calibrated")
    cov.set(xlabel="horizon step h", ylabel="share of logged values inside", ylim=(0, 1.02))
    cov.legend()
    if scored.multi_step_skipped:  # a fleet model: one-step only, said on the plot too
        err.text(0.5, 0.5, "one-step only", transform=err.transAxes, ha="center")
    return save_figure(fig, path, title)
