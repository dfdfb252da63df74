"""Pictures of a warehouse floor: a PNG of the layout with paths and collisions, a GIF of an episode.

Dimensions: ``T`` ticks, ``N`` robots, ``H`` humans, ``F`` frames.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import EllipseCollection, LineCollection, PatchCollection  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from worldmodel.envs.warehouse import ROBOT_RADIUS  # noqa: E402
from worldmodel.envs.warehouse_layout import Layout  # noqa: E402

_FIGURE_WIDTH = 9.0
"""Inches; the height follows the floor's aspect ratio."""
_FRAME_DPI = 60
"""Animation frames are smaller than the PNG: a GIF holds hundreds of them."""
_ROBOT_COLOUR, _HUMAN_COLOUR, _CONTACT_COLOUR = "#1f77b4", "#ff7f0e", "#d62728"


def draw_floor(layout: Layout, paths: np.ndarray | None = None, collisions: np.ndarray | None = None,
               path: str | Path = "floor.png", title: str | None = None,
               humans: np.ndarray | None = None) -> Path:
    """A PNG of the floor: shelves, drop stations, pick points, robots' paths and where they collided.

    Args:
        layout: the floor.
        paths: (T, N, 2) robot positions per tick, one colour per robot (start o); None draws the floor only.
        collisions: (T, N) contacts per robot and tick, aligned with ``paths``; where one begins is marked x
            (a jam lasts many ticks, and a mark per tick would hide the floor).
        path: where the PNG goes.
        title: drawn above the floor.
        humans: (T, H, 2) human positions per tick, drawn dashed.

    Returns:
        ``path``.

    Raises:
        ValueError: a shape that does not match the others, naming it.
    """
    paths, collisions, humans = _check_tracks(paths, collisions, humans)
    fig, ax = _floor_axes(layout)
    if humans is not None:
        ax.add_collection(LineCollection(np.swapaxes(humans, 0, 1), colors=_HUMAN_COLOUR, linestyles="--",
                                         linewidths=0.8, alpha=0.7))
    if paths is not None:
        colours = plt.get_cmap("tab20")(np.arange(paths.shape[1]) % 20)
        ax.add_collection(LineCollection(np.swapaxes(paths, 0, 1), colors=colours, linewidths=1.0))
        ax.scatter(paths[0, :, 0], paths[0, :, 1], s=10, c=colours, marker="o", zorder=3)
    if collisions is not None:
        touching = collisions > 0  # (T, N)
        onset = touching & ~np.concatenate([np.zeros_like(touching[:1]), touching[:-1]])
        ax.scatter(paths[onset][:, 0], paths[onset][:, 1], s=24, c=_CONTACT_COLOUR, marker="x", zorder=4,
                   label=f"contacts begin ({int(onset.sum())}; {int(touching.sum())} robot-ticks in contact)")
        ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def floor_frames(layout: Layout, robots: np.ndarray, humans: np.ndarray | None = None,
                 collisions: np.ndarray | None = None, stride: int = 1) -> np.ndarray:
    """Pictures of every ``stride``-th tick: robots and humans as discs of their true size, robots in contact red.

    Args:
        layout: the floor.
        robots: (T, N, 2) robot positions per tick.
        humans: (T, H, 2) human positions per tick.
        collisions: (T, N) contacts per robot and tick.
        stride: ticks between frames, >= 1.

    Returns:
        (F, height, width, 3) uint8 images, F = ceil(T / stride).
    """
    robots, collisions, humans = _check_tracks(robots, collisions, humans)
    if robots is None or stride < 1:
        raise ValueError(f"floor_frames needs robots (T, N, 2) and stride >= 1, got stride={stride}")
    fig, ax = _floor_axes(layout)
    fig.set_dpi(_FRAME_DPI)
    ax.set_title("tick 0")
    fig.tight_layout()  # once: the frames share one layout
    ticks = np.arange(0, len(robots), stride)
    discs = _discs(ax, robots[0], _ROBOT_COLOUR)
    people = _discs(ax, humans[0], _HUMAN_COLOUR) if humans is not None else None
    frames = []
    for t in ticks:  # one draw per frame: matplotlib has no batched rendering
        discs.set_offsets(robots[t])
        if collisions is not None:
            discs.set_facecolors(np.where(collisions[t, :, None] > 0, matplotlib.colors.to_rgba_array(
                _CONTACT_COLOUR), matplotlib.colors.to_rgba_array(_ROBOT_COLOUR)))
        if people is not None:
            people.set_offsets(humans[t])
        ax.set_title(f"tick {t}")
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return np.stack(frames)


def animate(frames: np.ndarray, path: str | Path, fps: float = 10.0) -> Path:
    """Write (F, height, width, 3) uint8 frames as a looping GIF at ``fps`` frames per second; returns ``path``."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be (F >= 1, height, width, 3) uint8, got {frames.shape} {frames.dtype}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
    return Path(path)


def _floor_axes(layout: Layout) -> tuple[plt.Figure, plt.Axes]:
    """A figure holding the floor's outline, shelves (grey), drop stations (green squares) and pick points."""
    height = max(2.0, _FIGURE_WIDTH * layout.height / layout.width)
    fig, ax = plt.subplots(figsize=(_FIGURE_WIDTH, height))
    shelves = np.asarray(layout.shelves, dtype=float).reshape(-1, 4)
    ax.add_collection(PatchCollection([Rectangle((x0, y0), x1 - x0, y1 - y0) for x0, y0, x1, y1 in shelves],
                                      facecolor="0.6", edgecolor="0.3", linewidth=0.5))
    ax.add_patch(Rectangle((0, 0), layout.width, layout.height, fill=False, edgecolor="k", linewidth=1.5))
    stations, picks = np.asarray(layout.stations).reshape(-1, 2), np.asarray(layout.picks).reshape(-1, 2)
    ax.scatter(stations[:, 0], stations[:, 1], s=40, marker="s", c="#2ca02c", zorder=2)
    ax.scatter(picks[:, 0], picks[:, 1], s=6, marker=".", c="0.4", zorder=2)
    ax.set(xlim=(-0.5, layout.width + 0.5), ylim=(-0.5, layout.height + 0.5), aspect="equal",
           xlabel="x (m)", ylabel="y (m)")
    return fig, ax


def _discs(ax: plt.Axes, centres: np.ndarray, colour: str) -> EllipseCollection:
    """Discs of the agents' radius in floor metres at ``centres`` (K, 2), moved later by ``set_offsets``."""
    size = np.full(len(centres), 2 * ROBOT_RADIUS)
    discs = EllipseCollection(size, size, np.zeros(len(centres)), units="xy", offsets=centres,
                              offset_transform=ax.transData, facecolors=colour, edgecolors="k", linewidths=0.3)
    ax.add_collection(discs)
    return discs


def _check_tracks(paths: np.ndarray | None, collisions: np.ndarray | None,
                  humans: np.ndarray | None) -> tuple[np.ndarray | None, ...]:
    """The arrays as float/int numpy arrays, or ValueError naming the one whose shape does not fit."""
    if paths is not None:
        paths = np.asarray(paths, dtype=float)
        if paths.ndim != 3 or paths.shape[-1] != 2:
            raise ValueError(f"paths must be (T, N, 2) positions, got shape {paths.shape}")
    if collisions is not None:
        collisions = np.asarray(collisions)
        if paths is None or collisions.shape != paths.shape[:2]:
            expected = "paths to go with them" if paths is None else f"shape {paths.shape[:2]} (T, N) like paths"
            raise ValueError(f"collisions of shape {collisions.shape} need {expected}")
    if humans is not None:
        humans = np.asarray(humans, dtype=float)
        if humans.ndim != 3 or humans.shape[-1] != 2 or (paths is not None and len(humans) != len(paths)):
            raise ValueError(f"humans must be (T, H, 2) positions over the same T as paths, got {humans.shape}")
    return paths, collisions, humans
