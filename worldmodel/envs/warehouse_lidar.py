"""What a warehouse robot's LiDAR sees: a point set in the robot's frame, from the physical states and the floor.

Two kinds of points, padded to a fixed ``P`` = ``agents + beams`` with a validity mask:

- the other robots and humans within ``reach``, nearest first, as a tracker reports them: their
  centres and velocities;
- where each of ``beams`` equally spaced beams first meets a shelf or wall within ``reach`` (the
  scanner's returns on the surfaces around the robot). Beams pass through agents: those come from
  the tracker's points.

The robot's frame is the floor's axes moved to the robot's centre (robots have no heading), as in the
neighbour slots of ``warehouse_features``. One batched torch program over every robot of a floor (dense
N x O pairs and N x beams x R rectangles); any leading dims (``...``, e.g. T ticks) broadcast.

Dimensions: ``N`` robots, ``O`` agents that can be sensed, ``R`` shelves and walls, ``C`` agent points,
``L`` beams, ``P`` = C + L points, ``D`` = ``POINT_DIM``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from worldmodel.envs.warehouse import KIND_HUMAN, KIND_NONE, KIND_ROBOT, POS_DIMS, ROBOT_RADIUS, SENSE_RADIUS, VEL_DIMS
from worldmodel.envs.warehouse_layout import Layout, nearest_on_rects

POINT_POS = slice(0, 2)
"""Where a point carries its position relative to the robot (x, y), metres."""
POINT_VEL = slice(2, 4)
"""Where a point carries its velocity relative to the robot (a shelf's is minus the robot's own)."""
POINT_ROBOT, POINT_HUMAN, POINT_SURFACE = 4, 5, 6
"""One-hot columns: the point is a robot, a human, or a return from a shelf or wall."""
POINT_DIM = 7
"""D, the features of one point."""


@dataclass(frozen=True)
class LidarConfig:
    """What the scanner and the tracker see."""

    reach: float = SENSE_RADIUS
    """Range, metres: agents whose centres and surfaces that lie farther are not seen."""
    agents: int = 8
    """C, the agent points (the nearest agents in range; twice the observation's neighbour slots)."""
    beams: int = 32
    """L, the scanner's beams, equally spaced over the full turn."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.reach) and self.reach > 2 * ROBOT_RADIUS):
            raise ValueError(f"reach must be finite and > {2 * ROBOT_RADIUS} m (two robot radii), got {self.reach}")
        for name, least in (("agents", 0), ("beams", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")

    @property
    def points(self) -> int:
        """P, the padded size of every point set."""
        return self.agents + self.beams


LIDAR = LidarConfig()
"""The default scanner: the features' sensing radius, 8 agents, 32 beams (P = 40)."""


@dataclass(frozen=True)
class PointSet:
    """Every robot's point set: agent points first (nearest first), then the beams in angle order."""

    points: torch.Tensor
    """(..., N, P, D) in the robot's frame; padded points are zeros."""
    mask: torch.Tensor
    """(..., N, P) bool, True for a point that was seen."""


def lidar_points(
    pos: torch.Tensor,
    vel: torch.Tensor,
    others_pos: torch.Tensor,
    others_vel: torch.Tensor,
    others_kind: torch.Tensor | np.ndarray,
    layout: Layout,
    config: LidarConfig = LIDAR,
) -> PointSet:
    """Robots' point sets from their states, the sensed agents' states and the floor.

    An other agent at exactly a robot's own position is that robot itself and is never seen, so callers
    may pass the robots among the others (the env's order: robots then humans), as ``observe`` takes them.

    Args:
        pos, vel: (..., N, 2) the robots' positions and velocities.
        others_pos, others_vel: (..., O, 2) every agent that can be sensed.
        others_kind: (O,) ``KIND_ROBOT`` or ``KIND_HUMAN`` (``KIND_NONE`` entries are never seen).
        layout: the floor whose shelves and walls the beams meet.
        config: reach, agent points and beams.

    Returns:
        PointSet of P = ``config.points`` points per robot, in ``pos``'s dtype and device.
    """
    kind = torch.as_tensor(others_kind, dtype=torch.long, device=pos.device)
    if kind.shape != others_pos.shape[-2:-1]:
        raise ValueError(f"others_kind must be (O,) = ({others_pos.shape[-2]},), got {tuple(kind.shape)}")
    if pos.shape[-1:] != (2,) or vel.shape != pos.shape or others_vel.shape != others_pos.shape:
        shapes = ", ".join(str(tuple(x.shape)) for x in (pos, vel, others_pos, others_vel))
        raise ValueError(f"pos and vel must be (..., N, 2) and others_pos and others_vel (..., O, 2), got {shapes}")
    agents, seen = _agent_points(pos, vel, others_pos, others_vel, kind, config)
    rects = torch.tensor(layout.obstacles, dtype=pos.dtype, device=pos.device)  # (R, 4)
    surface, hit = _beam_points(pos, vel, rects, config)
    return PointSet(torch.cat([agents, surface], -2), torch.cat([seen, hit], -1))


def lidar_from_step(obs: np.ndarray, info: dict, layout: Layout, config: LidarConfig = LIDAR) -> PointSet:
    """The point sets of a ``WarehouseFloor`` step: its robots' observations (N, S) and its info (the humans).

    Returns:
        PointSet with points (N, P, D) float32 and mask (N, P).
    """
    robots = torch.from_numpy(np.ascontiguousarray(obs, dtype=np.float32))
    pos, vel = robots[:, POS_DIMS], robots[:, VEL_DIMS]
    humans_pos, humans_vel = (torch.from_numpy(np.array(info[key], dtype=np.float32))
                              for key in ("humans_pos", "humans_vel"))
    kind = np.repeat([KIND_ROBOT, KIND_HUMAN], [len(pos), len(humans_pos)])
    return lidar_points(pos, vel, torch.cat([pos, humans_pos]), torch.cat([vel, humans_vel]), kind, layout, config)


def _agent_points(pos: torch.Tensor, vel: torch.Tensor, others_pos: torch.Tensor, others_vel: torch.Tensor,
                  kind: torch.Tensor, config: LidarConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``config.agents`` nearest agents in reach: points (..., N, C, D) and mask (..., N, C)."""
    rel = others_pos.unsqueeze(-3) - pos.unsqueeze(-2)  # (..., N, O, 2) other minus own
    rel_vel = others_vel.unsqueeze(-3) - vel.unsqueeze(-2)
    dist = torch.hypot(rel[..., 0], rel[..., 1])  # (..., N, O)
    # A zero offset is the robot itself.
    dist = torch.where((dist <= config.reach) & (dist > 0) & (kind != KIND_NONE), dist, float("inf"))
    one_hot = torch.stack([kind == KIND_ROBOT, kind == KIND_HUMAN, torch.zeros_like(kind, dtype=torch.bool)], -1)
    features = torch.cat([rel, rel_vel, one_hot.to(rel.dtype).expand(*rel.shape[:-1], 3)], -1)  # (..., N, O, D)
    short = config.agents - dist.shape[-1]  # fewer agents than points: padded columns are never seen
    if short > 0:
        dist = torch.nn.functional.pad(dist, (0, short), value=float("inf"))
        features = torch.nn.functional.pad(features, (0, 0, 0, short))
    near, index = dist.topk(config.agents, dim=-1, largest=False)  # (..., N, C)
    seen = torch.isfinite(near)
    points = features.gather(-2, index.unsqueeze(-1).expand(*index.shape, POINT_DIM))  # (..., N, C, D)
    return points * seen.unsqueeze(-1), seen


def _beam_points(pos: torch.Tensor, vel: torch.Tensor, rects: torch.Tensor,
                 config: LidarConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Each beam's first return on ``rects`` (R, 4) within reach: points (..., N, L, D) and mask (..., N, L)."""
    # Half a step off the axes, so no beam runs parallel to a rectangle's faces for the usual counts.
    angle = (torch.arange(config.beams, dtype=pos.dtype, device=pos.device) + 0.5) * (2 * math.pi / config.beams)
    ux, uy = torch.cos(angle), torch.sin(angle)  # (L,)
    ix = 1.0 / torch.where(ux.abs() < 1e-9, 1e-9, ux)[:, None]  # (L, 1); a beam along y meets x-faces at +-huge
    iy = 1.0 / torch.where(uy.abs() < 1e-9, 1e-9, uy)[:, None]
    # Slab test, x and y apart: entry and exit distances along each beam through each rectangle.
    x, y = pos[..., 0, None, None], pos[..., 1, None, None]  # (..., N, 1, 1)
    tx0, tx1 = (rects[:, 0] - x) * ix, (rects[:, 2] - x) * ix  # (..., N, L, R)
    ty0, ty1 = (rects[:, 1] - y) * iy, (rects[:, 3] - y) * iy
    enter = torch.maximum(torch.minimum(tx0, tx1), torch.minimum(ty0, ty1)).clamp_min(0.0)  # 0: inside it
    leave = torch.minimum(torch.maximum(tx0, tx1), torch.maximum(ty0, ty1))
    t = torch.where(leave >= enter, enter, float("inf")).amin(-1)  # (..., N, L) first return
    hit = t <= config.reach
    t = torch.where(hit, t, 0.0)
    points = pos.new_zeros(*t.shape, POINT_DIM)
    points[..., POINT_POS] = torch.stack([t * ux, t * uy], -1)
    points[..., POINT_VEL] = -vel.unsqueeze(-2)  # a shelf stands still
    points[..., POINT_SURFACE] = 1.0
    return points * hit.unsqueeze(-1), hit


def clearance(pos: torch.Tensor, others_pos: torch.Tensor, others_kind: torch.Tensor | np.ndarray, layout: Layout,
              reach: float = SENSE_RADIUS) -> torch.Tensor:
    """Each robot's clearance: the gap from its edge to the nearest other agent's edge or shelf or wall, metres.

    Capped at ``reach`` minus two radii, the farthest gap whose agent and surface a scanner of ``reach``
    still sees; overlaps count as 0.

    Args:
        pos: (..., N, 2); others_pos: (..., O, 2); others_kind: (O,) as ``lidar_points`` takes them.

    Returns:
        (..., N) in [0, reach - 2 * ROBOT_RADIUS].
    """
    kind = torch.as_tensor(others_kind, dtype=torch.long, device=pos.device)
    rel = others_pos.unsqueeze(-3) - pos.unsqueeze(-2)  # (..., N, O, 2)
    dist = torch.hypot(rel[..., 0], rel[..., 1])
    dist = torch.where((dist > 0) & (kind != KIND_NONE), dist, float("inf"))
    rects = torch.tensor(layout.obstacles, dtype=pos.dtype, device=pos.device)
    to_rect = nearest_on_rects(pos, rects) - pos.unsqueeze(-2)  # (..., N, R, 2)
    to_surface = torch.hypot(to_rect[..., 0], to_rect[..., 1]).amin(-1)  # (..., N)
    gap = torch.minimum(dist.amin(-1) - 2 * ROBOT_RADIUS, to_surface - ROBOT_RADIUS)
    return gap.clamp(0.0, reach - 2 * ROBOT_RADIUS)
