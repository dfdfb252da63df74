"""PNG report of a fleet run (over HTTP or the fleet bus): latency over time, its histogram, and a few agents' paths."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from cluster.commands.report import draw_tracks, plt, save_figure  # pyplot with the files-only backend set
from serving.fleet_config import FleetTrace


def plot_fleet(trace: FleetTrace, path: Path, title: str) -> Path:
    """Request latency over the run and its histogram (client-side), and Nav2D paths when there are any.

    Args:
        trace: what ``drive_fleet`` recorded (send times, latencies, first episodes of a few agents).
        path: the PNG to write.
        title: the figure's title.

    Returns:
        ``path``.
    """
    if not trace.latency_ms:
        raise ValueError("the fleet sent no requests: nothing to plot")
    panels = 3 if trace.tracks else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 5))
    sent, ms = np.asarray(trace.sent_s), np.asarray(trace.latency_ms)
    p99 = float(np.percentile(ms, 99))

    over_time = axes[0]
    over_time.scatter(sent, ms, s=6, alpha=0.6, color="C0", lw=0)
    order = np.argsort(sent)
    window = len(ms) // 50  # a rolling mean over 2% of the requests, when there are enough
    if window >= 5:
        rolling = np.convolve(ms[order], np.ones(window) / window, mode="valid")
        over_time.plot(sent[order][window - 1:], rolling, color="C1", lw=1.2, label=f"mean of {window}")
    over_time.axhline(p99, color="k", ls="--", lw=0.8, label=f"p99 {p99:.1f} ms")
    over_time.set(title="latency of every request", xlabel="seconds into the run", ylabel="ms", yscale="log")
    over_time.legend(loc="upper right")

    hist = axes[1]
    hist.hist(ms, bins=60, color="C0")
    hist.axvline(p99, color="k", ls="--", lw=0.8, label="p99")
    hist.set(title="latency histogram (client-side)", xlabel="ms", ylabel="requests", yscale="log")
    hist.legend()

    if trace.tracks:
        paths = axes[2]
        draw_tracks(paths, [dataclasses.asdict(track) for track in trace.tracks])
        paths.set(title="first episodes: start o, goal *, zones shaded (dotted: goal not reached in the run)",
                  aspect="equal")
        paths.title.set_fontsize(9)
    return save_figure(fig, path, title)
