"""The warehouse floor plan and the rectangle geometry its physics and features share.

The floor is [0, width] x [0, height] metres. Shelves are axis-aligned rectangles in columns with
2 m aisles between them; drop stations line the bottom wall; pick points sit in the aisles beside
the shelves. The walls are rectangles just outside the floor, so one code path handles shelves and
walls alike (``Layout.obstacles``).

Dimensions: ``R`` rectangles, ``D`` stations, ``P`` pick points, ``G`` agents, ``Q`` points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import numpy as np

SHELF_WIDTH = 1.0
"""Depth of a (double-sided) shelf column along x, metres."""
AISLE = 2.0
"""Width of every aisle, between shelf columns and across the shelf blocks."""
BLOCK_LENGTH = 6.0
"""Length along y of one shelf block between two cross aisles."""
STAGING = 3.0
"""Depth of the band along the bottom wall that holds the drop stations."""
STATION_Y = 1.0
"""Distance of the drop stations from the bottom wall."""
PICK_OFFSET = 0.6
"""Distance of a pick point from its shelf's face: a robot there stays 0.3 m clear of the shelf."""
PICK_SPACING = 1.5
"""Distance between pick points along a shelf face."""
WALL = 2.0
"""Thickness of the wall rectangles: deeper than any step can carry an agent, so the nearest way out
of a wall is always back onto the floor."""
FLOOR_PER_ROBOT = 12.0
"""Square metres of floor per robot that ``layout_for`` aims at."""
ASPECT = 1.5
"""Width over height of the floors ``layout_for`` builds."""

_START_MARGIN = 0.2  # metres of free room around every start point
_PITCH = SHELF_WIDTH + AISLE
_BLOCK_PITCH = BLOCK_LENGTH + AISLE
_FACE_NORMALS = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])  # out through xlo, xhi, ylo, yhi

Array = TypeVar("Array")  # a numpy array or a torch tensor: the geometry below works on both


@dataclass(frozen=True, eq=False)
class Layout:
    """One warehouse floor. Arrays are float64 and read-only."""

    width: float
    """Extent of the floor along x, metres."""
    height: float
    """Extent of the floor along y, metres."""
    shelves: np.ndarray
    """(R, 4) shelf rectangles [xlo, ylo, xhi, yhi], inside the floor."""
    stations: np.ndarray
    """(D, 2) drop points, D >= 1."""
    picks: np.ndarray
    """(P, 2) pick points, P >= 1."""
    aisles_x: np.ndarray = field(default=None)  # type: ignore[assignment]
    """(X,) x of the free vertical lines humans walk along; default: the floor's centre line."""
    aisles_y: np.ndarray = field(default=None)  # type: ignore[assignment]
    """(Y,) y of the free horizontal lines humans walk along; default: the floor's centre line."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.width) and math.isfinite(self.height) and self.width > 0 and self.height > 0):
            raise ValueError(f"width and height must be finite and > 0, got {self.width} x {self.height}")
        object.__setattr__(self, "width", float(self.width))
        object.__setattr__(self, "height", float(self.height))
        shelves = _frozen(self.shelves, "shelves", 4, min_rows=0)
        if np.any(shelves[:, 2:] <= shelves[:, :2]):
            raise ValueError(f"every shelf needs xlo < xhi and ylo < yhi, got {shelves.tolist()}")
        if not (self.contains(shelves[:, :2]).all() and self.contains(shelves[:, 2:]).all()):
            raise ValueError(f"shelves must lie on the floor [0, {self.width}] x [0, {self.height}]")
        object.__setattr__(self, "shelves", shelves)
        for name in ("stations", "picks"):
            points = _frozen(getattr(self, name), name, 2, min_rows=1)
            if not self.contains(points).all():
                raise ValueError(f"{name} must lie on the floor [0, {self.width}] x [0, {self.height}]")
            object.__setattr__(self, name, points)
        for name, extent in (("aisles_x", self.width), ("aisles_y", self.height)):
            value = getattr(self, name)
            lines = np.array([extent / 2] if value is None else value, dtype=np.float64).ravel()
            if lines.size == 0 or not np.all((lines >= 0) & (lines <= extent)):
                raise ValueError(f"{name} must be one or more values in [0, {extent}], got {lines.tolist()}")
            lines.flags.writeable = False
            object.__setattr__(self, name, lines)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Whether each of ``points`` (..., 2) lies on the floor: (...,) bool."""
        p = np.asarray(points)
        return (p[..., 0] >= 0) & (p[..., 0] <= self.width) & (p[..., 1] >= 0) & (p[..., 1] <= self.height)

    @cached_property
    def obstacles(self) -> np.ndarray:
        """(R + 4, 4) the shelves, then the left, right, bottom and top walls, as rectangles."""
        w, h = self.width, self.height
        walls = np.array(
            [[-WALL, -WALL, 0.0, h + WALL], [w, -WALL, w + WALL, h + WALL], [0.0, -WALL, w, 0.0], [0.0, h, w, h + WALL]]
        )
        rects = np.concatenate([self.shelves, walls])
        rects.flags.writeable = False
        return rects

    @cached_property
    def walkway_nodes(self) -> np.ndarray:
        """(Y, X, 2) the crossings of the walkway lines, where humans turn."""
        gx, gy = np.meshgrid(self.aisles_x, self.aisles_y)
        return np.stack([gx, gy], axis=-1)


def layout_for(robots: int) -> Layout:
    """A floor sized for ``robots`` (about ``FLOOR_PER_ROBOT`` m^2 each): shelf columns in blocks.

    50 robots get 29 x 19 m (9 columns, 2 blocks), 200 robots 59 x 43 m; any fleet gets at least
    two columns and one block.
    """
    if isinstance(robots, bool) or not isinstance(robots, (int, np.integer)) or robots < 1:
        raise ValueError(f"robots must be an int >= 1, got {robots!r}")
    area = FLOOR_PER_ROBOT * robots
    columns = max(2, round((math.sqrt(area * ASPECT) - AISLE) / _PITCH))
    blocks = max(1, round((math.sqrt(area / ASPECT) - STAGING) / _BLOCK_PITCH))
    width = AISLE + columns * _PITCH
    height = STAGING + blocks * _BLOCK_PITCH
    # Shelf lower-left corners: column c at x = AISLE + c * pitch, block b above the staging band.
    x0, y0 = np.meshgrid(AISLE + _PITCH * np.arange(columns), STAGING + _BLOCK_PITCH * np.arange(blocks))
    x0, y0 = x0.ravel(), y0.ravel()  # (R,)
    shelves = np.stack([x0, y0, x0 + SHELF_WIDTH, y0 + BLOCK_LENGTH], axis=-1)
    along = np.arange(PICK_SPACING / 2, BLOCK_LENGTH, PICK_SPACING)  # offsets along one face
    px = np.concatenate([x0 - PICK_OFFSET, x0 + SHELF_WIDTH + PICK_OFFSET])  # both faces, (2R,)
    py = np.concatenate([y0, y0])
    picks = np.stack(np.broadcast_arrays(px[:, None], py[:, None] + along), axis=-1).reshape(-1, 2)
    station_x = np.arange(_PITCH / 2, width - _PITCH / 2 + 1e-9, _PITCH)
    stations = np.stack([station_x, np.full_like(station_x, STATION_Y)], axis=-1)
    aisles_x = AISLE / 2 + _PITCH * np.arange(columns + 1)
    aisles_y = np.concatenate([[STAGING - AISLE / 2], STAGING + BLOCK_LENGTH + AISLE / 2 + _BLOCK_PITCH * np.arange(blocks)])
    return Layout(width, height, shelves, stations, picks, aisles_x, aisles_y)


def nearest_on_rects(points: Array, rects: Array) -> Array:
    """The nearest point of each rectangle to each point; a point inside a rectangle is its own.

    Works on numpy arrays and on torch tensors alike (both of one kind).

    Args:
        points: (..., 2).
        rects: (R, 4) [xlo, ylo, xhi, yhi].

    Returns:
        (..., R, 2).
    """
    return points[..., None, :].clip(rects[:, :2], rects[:, 2:])


def project_out(
    pos: np.ndarray, vel: np.ndarray, rects: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move discs of ``radius`` out of the rectangles they overlap and stop their motion into them.

    Each overlapped rectangle pushes its disc out along its own normal to the nearest free point
    (a centre inside a rectangle leaves through the nearest face); the velocity component into the
    rectangle is zeroed. Corrections of several rectangles add up, which is exact for the
    orthogonal walls of a corner.

    Args:
        pos: (G, 2) disc centres.
        vel: (G, 2) velocities.
        rects: (R, 4) [xlo, ylo, xhi, yhi].
        radius: disc radius.

    Returns:
        pos (G, 2), vel (G, 2), depth (G, R): how far each disc overlapped each rectangle (0 if not).
    """
    # x and y as separate (G, R) arrays: numpy reduces a trailing axis of 2 slowly.
    x, y = pos[:, None, 0], pos[:, None, 1]  # (G, 1)
    ax = x - x.clip(rects[:, 0], rects[:, 2])  # (G, R) nearest point of the rectangle -> centre
    ay = y - y.clip(rects[:, 1], rects[:, 3])
    dist = np.hypot(ax, ay)
    inside = dist == 0.0
    faces = np.stack([x - rects[:, 0], rects[:, 2] - x, y - rects[:, 1], rects[:, 3] - y])  # (4, G, R) depth below each face
    exit_normal = _FACE_NORMALS[faces.argmin(axis=0)]  # (G, R, 2) out through the nearest face
    safe = np.where(inside, 1.0, dist)
    nx = np.where(inside, exit_normal[..., 0], ax / safe)  # (G, R) unit, pointing out of the rectangle
    ny = np.where(inside, exit_normal[..., 1], ay / safe)
    depth = np.maximum(np.where(inside, faces.min(axis=0) + radius, radius - dist), 0.0)  # (G, R)
    pos = pos + np.stack([(depth * nx).sum(axis=1), (depth * ny).sum(axis=1)], axis=-1)
    into = np.minimum(vel[:, None, 0] * nx + vel[:, None, 1] * ny, 0.0) * (depth > 0)  # (G, R) normal speed inwards
    vel = vel - np.stack([(into * nx).sum(axis=1), (into * ny).sum(axis=1)], axis=-1)
    return pos, vel, depth


def draw_starts(layout: Layout, count: int, avoid: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct random free points at least two radii plus a margin from each other, from
    shelves and walls (one radius plus a margin) and from ``avoid`` (K, 2): (count, 2)."""
    spacing = 2 * radius + _START_MARGIN
    gx, gy = np.meshgrid(np.arange(spacing / 2, layout.width, spacing), np.arange(spacing / 2, layout.height, spacing))
    points = np.stack([gx.ravel(), gy.ravel()], axis=-1)  # (Q, 2) a lattice: nobody starts in contact
    gap = np.linalg.norm(points[:, None, :] - nearest_on_rects(points, layout.obstacles), axis=-1).min(axis=1)
    free = gap >= radius + _START_MARGIN
    if len(avoid):
        free &= np.linalg.norm(points[:, None, :] - avoid, axis=-1).min(axis=1) >= spacing
    points = points[free]
    if len(points) < count:
        raise ValueError(f"the layout has free room for {len(points)} robots, {count} asked for")
    return points[rng.choice(len(points), size=count, replace=False)]


def draw_crossings(layout: Layout, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random walkway crossings, distinct while there are enough: (count, 2) long [row, column]."""
    rows, cols = layout.walkway_nodes.shape[:2]
    flat = rng.choice(rows * cols, size=count, replace=count > rows * cols)
    return np.stack([flat // cols, flat % cols], axis=-1)


def nearest_crossings(layout: Layout, points: np.ndarray) -> np.ndarray:
    """The walkway crossing nearest to each of ``points`` (K, 2): (K, 2) long [row, column]."""
    cols = layout.walkway_nodes.shape[1]
    flat = np.linalg.norm(points[:, None, :] - layout.walkway_nodes.reshape(-1, 2), axis=-1).argmin(axis=1)
    return np.stack([flat // cols, flat % cols], axis=-1)


def _frozen(value: Any, name: str, columns: int, min_rows: int) -> np.ndarray:
    """``value`` as a read-only finite float64 (rows, columns) array with at least ``min_rows`` rows."""
    a = np.array(value, dtype=np.float64)
    if a.size == 0:
        a = a.reshape(0, columns)
    if a.ndim != 2 or a.shape[1] != columns or a.shape[0] < min_rows or not np.all(np.isfinite(a)):
        rows = "any number of" if min_rows == 0 else f"at least {min_rows}"
        raise ValueError(f"{name} must be a finite array of {rows} rows of {columns}, got shape {a.shape}")
    a.flags.writeable = False
    return a
