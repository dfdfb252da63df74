"""The warehouse observation computed from physical states: the one feature function of the env and the planners.

Everything in a robot's observation after its position and velocity (``PHYS_DIMS``) is computed here
from the physical states of all agents and the layout, so a planner that predicts physical states
rebuilds exactly the observation the env would give. One batched torch program; any leading batch
dims (``...``, e.g. K candidates) broadcast.

Dimensions: ``N`` robots observed, ``O`` agents that can be sensed, ``M`` neighbour slots, ``S``
observation size, ``R`` shelves and walls; for a planner's fast path (``observe_nearby``) ``C`` others
and ``Q`` rectangles per robot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from worldmodel.envs.warehouse import (
    KIND_NONE,
    NEIGHBOURS,
    NEIGHBOUR_DIMS,
    OBS_DIM,
    POS_DIMS,
    SENSE_RADIUS,
    SHELF_DIMS,
    SLOT_KIND,
    SLOT_POS,
    SLOT_SIZE,
    SLOT_VEL,
    TASK_DIMS,
    VEL_DIMS,
)
from worldmodel.envs.warehouse_layout import Layout


def observe(
    pos: torch.Tensor,
    vel: torch.Tensor,
    task: torch.Tensor,
    others_pos: torch.Tensor,
    others_vel: torch.Tensor,
    others_kind: torch.Tensor | np.ndarray,
    layout: Layout,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Robots' observations from their states, the sensed agents' states and the floor.

    An other agent at exactly a robot's own position is that robot itself and is never sensed, so
    callers may pass the robots among the others (the env passes robots then humans).

    Args:
        pos, vel: (..., N, 2) the robots' positions and velocities.
        task: (..., N, 2) their target points.
        others_pos, others_vel: (..., O, 2) every agent that can be sensed.
        others_kind: (O,) ``KIND_ROBOT`` or ``KIND_HUMAN`` (``KIND_NONE`` entries are never sensed).
        layout: the floor whose shelves and walls ``SHELF_DIMS`` measures.

    Returns:
        obs (..., N, S) in ``pos``'s dtype; slot_index (..., N, M) long: the index into the others
        of the agent in each slot, nearest first, -1 for an empty slot.
    """
    kind = _kinds(others_kind, others_pos)
    dx = others_pos[..., None, :, 0] - pos[..., :, None, 0]  # (..., N, O) other minus own
    dy = others_pos[..., None, :, 1] - pos[..., :, None, 1]
    _, index = _nearest(dx, dy, kind != KIND_NONE)  # (..., N, M)
    slots = _slots(dx, dy, index, index, others_vel, vel, kind)
    shelf, _ = _to_nearest_rect(pos, torch.tensor(layout.obstacles, dtype=pos.dtype, device=pos.device))
    return _assemble(pos, vel, task, slots, shelf), index


def observe_arrays(
    pos: np.ndarray,
    vel: np.ndarray,
    task: np.ndarray,
    others_pos: np.ndarray,
    others_vel: np.ndarray,
    others_kind: np.ndarray,
    layout: Layout,
) -> tuple[np.ndarray, np.ndarray]:
    """``observe`` on float32 numpy arrays, for the env: obs (..., N, S) float32, slot_index (..., N, M) int64."""
    tensors = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (pos, vel, task, others_pos, others_vel))
    obs, slot_index = observe(*tensors, others_kind, layout)
    return obs.numpy(), slot_index.numpy()


@dataclass(frozen=True)
class Nearby:
    """The agents and rectangles each robot may meet within a plan, chosen once per planning call.

    A plan's steps then measure N x C pairs and N x Q rectangles instead of N x O and N x R. In a
    plan of 1.5 s a robot moves at most 2.25 m, so the few agents and shelves nearest it now are in
    practice all it can sense or touch then (``observe_nearby`` says when its answer is ``observe``'s).
    """

    others: torch.Tensor
    """(N, C) long: indices into the others, ascending (so ties break as in ``observe``)."""
    rects: torch.Tensor
    """(N, Q, 4) each robot's nearest shelves and walls [xlo, ylo, xhi, yhi], in the layout's order."""


@dataclass(frozen=True)
class Sensed:
    """``observe_nearby``'s answer: the observation and the distances a planner's costs reuse."""

    obs: torch.Tensor
    """(..., N, S) as ``observe`` gives it."""
    slot_index: torch.Tensor
    """(..., N, M) long, as ``observe`` gives it."""
    others_dist: torch.Tensor
    """(..., N, C) centre distance to each of ``Nearby.others``, inf unless sensed (itself, out of range)."""
    rect_gap: torch.Tensor
    """(..., N, Q) distance from the robot's centre to each of ``Nearby.rects``."""


def nearby(pos: torch.Tensor, others_pos: torch.Tensor, layout: Layout, others: int, rects: int) -> Nearby:
    """The ``others`` agents (the robot itself among them) and ``rects`` rectangles nearest each robot.

    Args:
        pos: (N, 2) the robots now; others_pos: (O, 2) every agent that can be sensed.
        others, rects: C and Q, capped at O and R.
    """
    if others < 1 or rects < 1:
        raise ValueError(f"others and rects must be >= 1, got {others} and {rects}")
    dist = torch.cdist(pos, others_pos)  # (N, O)
    chosen = dist.topk(min(others, dist.shape[-1]), largest=False).indices.sort(-1).values  # (N, C)
    boxes = torch.tensor(layout.obstacles, dtype=pos.dtype, device=pos.device)  # (R, 4)
    _, gap = _to_nearest_rect(pos, boxes)  # (N, R)
    near_rects = gap.topk(min(rects, len(boxes)), largest=False).indices.sort(-1).values  # (N, Q)
    return Nearby(chosen, boxes[near_rects])


def observe_nearby(
    pos: torch.Tensor,
    vel: torch.Tensor,
    task: torch.Tensor,
    others_pos: torch.Tensor,
    others_vel: torch.Tensor,
    others_kind: torch.Tensor | np.ndarray,
    near: Nearby,
) -> Sensed:
    """``observe`` over each robot's ``near`` others and rectangles only: the same observation whenever every
    agent a robot senses is among its ``Nearby.others`` and its nearest rectangle among its ``Nearby.rects``.

    Args as ``observe``'s (``near`` in place of the layout); the others must be those ``near`` indexes, the
    robots first: other n is robot n and never in its own slots, wherever it stands (a planner may place the
    others where the robots are not: ``FleetRollout(against_plans=True)``).
    """
    kind = _kinds(others_kind, others_pos)
    chosen = near.others  # (N, C)
    dx = others_pos[..., 0][..., chosen] - pos[..., 0:1]  # (..., N, C) other minus own
    dy = others_pos[..., 1][..., chosen] - pos[..., 1:2]
    itself = chosen == torch.arange(len(chosen), device=chosen.device)[:, None]  # (N, C)
    dist, local = _nearest(dx, dy, (kind[chosen] != KIND_NONE) & ~itself)  # (..., N, C), (..., N, M) into the chosen
    index = chosen.expand(*local.shape[:-1], chosen.shape[-1]).gather(-1, local.clamp_min(0))
    index = torch.where(local >= 0, index, -1)  # (..., N, M) into the others
    slots = _slots(dx, dy, local, index, others_vel, vel, kind)
    shelf, gap = _to_nearest_rect(pos, near.rects)
    return Sensed(_assemble(pos, vel, task, slots, shelf), index, dist, gap)


def _kinds(others_kind: torch.Tensor | np.ndarray, others_pos: torch.Tensor) -> torch.Tensor:
    kind = torch.as_tensor(others_kind, dtype=torch.long, device=others_pos.device)
    if kind.shape != others_pos.shape[-2:-1]:
        raise ValueError(f"others_kind must be (O,) = ({others_pos.shape[-2]},), got {tuple(kind.shape)}")
    return kind


def _assemble(pos: torch.Tensor, vel: torch.Tensor, task: torch.Tensor, slots: torch.Tensor,
              shelf: torch.Tensor) -> torch.Tensor:
    """The observation (..., N, S) from its parts; ``slots`` (..., N, M, SLOT_SIZE)."""
    obs = pos.new_zeros(*slots.shape[:-2], OBS_DIM)
    obs[..., POS_DIMS] = pos
    obs[..., VEL_DIMS] = vel
    obs[..., TASK_DIMS] = task
    obs[..., NEIGHBOUR_DIMS] = slots.flatten(-2)
    obs[..., SHELF_DIMS] = shelf
    return obs


def _to_nearest_rect(pos: torch.Tensor, rects: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vector from each of ``pos`` (..., N, 2) to the nearest point of the nearest of ``rects`` (R, 4) or
    (N, R, 4): (..., N, 2), and the distance to each rectangle (..., N, R)."""
    # x and y apart: (..., N, R) tensors are half the size of one (..., N, R, 2), and need no reduction over 2.
    x, y = pos[..., 0:1], pos[..., 1:2]  # (..., N, 1)
    dx = x.clamp(rects[..., 0], rects[..., 2]) - x  # (..., N, R)
    dy = y.clamp(rects[..., 1], rects[..., 3]) - y
    gap = torch.hypot(dx, dy)
    nearest = gap.argmin(dim=-1, keepdim=True)  # (..., N, 1)
    return torch.cat([dx.gather(-1, nearest), dy.gather(-1, nearest)], dim=-1), gap


def _nearest(dx: torch.Tensor, dy: torch.Tensor, sensable: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets (..., N, C) to candidate others -> their distances, inf unless sensed (..., N, C), and the
    M nearest sensed, nearest first (..., N, M) into C, -1 for an empty slot."""
    dist = torch.hypot(dx, dy)
    # A zero offset is the robot itself (``observe``'s callers pass the robots among the others).
    dist = torch.where((dist <= SENSE_RADIUS) & (dist > 0) & sensable, dist, float("inf"))
    short = NEIGHBOURS - dist.shape[-1]  # fewer candidates than slots: never-sensed columns keep one code path
    padded = torch.nn.functional.pad(dist, (0, short), value=float("inf")) if short > 0 else dist
    near, index = padded.topk(NEIGHBOURS, dim=-1, largest=False)
    return dist, torch.where(torch.isfinite(near), index, -1)


def _slots(dx: torch.Tensor, dy: torch.Tensor, local: torch.Tensor, index: torch.Tensor, others_vel: torch.Tensor,
           vel: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
    """Slots (..., N, M, SLOT_SIZE) of the agents at ``local`` (..., N, M) into the offsets dx, dy (..., N, C),
    which are the others at ``index`` (..., N, M); empty slots (-1) are all zeros."""
    filled = index >= 0
    local, index = local.clamp_min(0), index.clamp_min(0)
    lead, o = index.shape[:-2], others_vel.shape[-2]
    take = index.flatten(-2).unsqueeze(-1).expand(*lead, -1, 2)  # (..., N*M, 2)
    other_vel = others_vel.expand(*lead, o, 2).gather(-2, take).unflatten(-2, index.shape[-2:])  # (..., N, M, 2)
    slots = dx.new_zeros(*index.shape, SLOT_SIZE)
    slots[..., SLOT_POS] = torch.stack([dx.gather(-1, local), dy.gather(-1, local)], -1)
    slots[..., SLOT_VEL] = other_vel - vel.unsqueeze(-2)
    slots[..., SLOT_KIND] = kind[index].to(slots.dtype)
    return slots * filled.unsqueeze(-1)


def slot_agents(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The agents in each robot's slots, read back from observations (..., N, S): their positions and
    velocities (..., N, M, 2) on the floor (the robot's own plus the slot's relative ones) and their kinds
    (..., N, M) (``KIND_NONE`` for empty slots)."""
    slots = obs[..., NEIGHBOUR_DIMS].unflatten(-1, (NEIGHBOURS, SLOT_SIZE))
    pos = obs[..., None, POS_DIMS] + slots[..., SLOT_POS]
    vel = obs[..., None, VEL_DIMS] + slots[..., SLOT_VEL]
    return pos, vel, slots[..., SLOT_KIND].round()


def first_sightings(pos: torch.Tensor, seen: torch.Tensor, within: float) -> torch.Tensor:
    """(..., P) bool: of the sightings ``pos`` (..., P, 2) marked ``seen`` (..., P), each agent's first one, where
    sightings closer than ``within`` metres are one agent seen by several robots. Distances are exact (``cdist``'s
    matrix-product form, its default past 25 rows, is off by millimetres at floor coordinates)."""
    dist = torch.cdist(pos, pos, compute_mode="donot_use_mm_for_euclid_dist")  # (..., P, P)
    same = (dist < within) & seen[..., :, None] & seen[..., None, :]
    return seen & ~torch.tril(same, diagonal=-1).any(-1)
