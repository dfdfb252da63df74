"""The warehouse observation computed from physical states: the one feature function of the env and the planners.

Everything in a robot's observation after its position and velocity (``PHYS_DIMS``) is computed here
from the physical states of all agents and the layout, so a planner that predicts physical states
rebuilds exactly the observation the env would give. One batched torch program; any leading batch
dims (``...``, e.g. K candidates) broadcast.

Dimensions: ``N`` robots observed, ``O`` agents that can be sensed, ``M`` neighbour slots, ``S``
observation size, ``R`` shelves and walls.
"""

from __future__ import annotations

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
    kind = torch.as_tensor(others_kind, dtype=torch.long, device=pos.device)
    if kind.shape != others_pos.shape[-2:-1]:
        raise ValueError(f"others_kind must be (O,) = ({others_pos.shape[-2]},), got {tuple(kind.shape)}")
    slots, slot_index = _neighbour_slots(pos, vel, others_pos, others_vel, kind)  # (..., N, M, SLOT_SIZE)
    shelf = _to_nearest_rect(pos, torch.tensor(layout.obstacles, dtype=pos.dtype, device=pos.device))  # (..., N, 2)

    lead = slots.shape[:-2]  # (..., N)
    obs = pos.new_zeros(*lead, OBS_DIM)
    obs[..., POS_DIMS] = pos
    obs[..., VEL_DIMS] = vel
    obs[..., TASK_DIMS] = task
    obs[..., NEIGHBOUR_DIMS] = slots.flatten(-2)
    obs[..., SHELF_DIMS] = shelf
    return obs, slot_index


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


def _to_nearest_rect(pos: torch.Tensor, rects: torch.Tensor) -> torch.Tensor:
    """Vector from each of ``pos`` (..., N, 2) to the nearest point of the nearest of ``rects`` (R, 4): (..., N, 2)."""
    # x and y apart: (..., N, R) tensors are half the size of one (..., N, R, 2), and need no reduction over 2.
    x, y = pos[..., 0:1], pos[..., 1:2]  # (..., N, 1)
    dx = x.clamp(rects[:, 0], rects[:, 2]) - x  # (..., N, R)
    dy = y.clamp(rects[:, 1], rects[:, 3]) - y
    nearest = torch.hypot(dx, dy).argmin(dim=-1, keepdim=True)  # (..., N, 1)
    return torch.cat([dx.gather(-1, nearest), dy.gather(-1, nearest)], dim=-1)


def _neighbour_slots(
    pos: torch.Tensor, vel: torch.Tensor, others_pos: torch.Tensor, others_vel: torch.Tensor, kind: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The M nearest sensed others of each robot as slots (..., N, M, SLOT_SIZE), and their indices (..., N, M)."""
    o = others_pos.shape[-2]
    if o < NEIGHBOURS:
        # Padding with unsensable entries keeps one code path when fewer agents than slots exist.
        pad = NEIGHBOURS - o
        others_pos = torch.cat([others_pos, others_pos.new_zeros(*others_pos.shape[:-2], pad, 2)], dim=-2)
        others_vel = torch.cat([others_vel, others_vel.new_zeros(*others_vel.shape[:-2], pad, 2)], dim=-2)
        kind = torch.cat([kind, kind.new_full((pad,), KIND_NONE)])
    rel_pos = others_pos.unsqueeze(-3) - pos.unsqueeze(-2)  # (..., N, O, 2) other minus own
    rel_vel = others_vel.unsqueeze(-3) - vel.unsqueeze(-2)  # (..., N, O, 2)
    rel_pos, rel_vel = torch.broadcast_tensors(rel_pos, rel_vel)
    dist = rel_pos.norm(dim=-1)  # (..., N, O)
    itself = (rel_pos == 0).all(dim=-1)
    sensed = (dist <= SENSE_RADIUS) & ~itself & (kind != KIND_NONE)
    near, index = dist.masked_fill(~sensed, float("inf")).topk(NEIGHBOURS, dim=-1, largest=False)  # (..., N, M)
    filled = torch.isfinite(near)

    take = index.unsqueeze(-1).expand(*index.shape, 2)
    slots = rel_pos.new_zeros(*index.shape, SLOT_SIZE)  # (..., N, M, SLOT_SIZE)
    slots[..., SLOT_POS] = rel_pos.gather(-2, take)
    slots[..., SLOT_VEL] = rel_vel.gather(-2, take)
    slots[..., SLOT_KIND] = kind[index].to(slots.dtype)
    slots = slots * filled.unsqueeze(-1)  # empty slots are all zeros
    return slots, torch.where(filled, index, torch.full_like(index, -1))
