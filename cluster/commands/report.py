"""PNG reports: what people would rather see than read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402


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
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
