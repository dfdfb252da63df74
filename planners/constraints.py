"""Hard constraints of a request: what each one's margin is, and the action bounds' projection.

A margin is how far a state is from violating a constraint, in the constraint's own units
(positive: satisfied, negative: violated):

- no-fly zone: distance from the position to the nearest zone's edge (distance - radius);
- state box: distance from the position to the box's nearest side, inside it;
- speed: max_speed - |velocity|.

An absent constraint (no key in params, a zero-radius zone slot, +-inf bounds) has margin +inf.
Constraints travel in ``planners.objectives`` Params (``ZONES``, ``BOX``, ``MAX_SPEED``, and
``ACTION_LOW``/``ACTION_HIGH`` for the projection), with the agent axis N first.

Shapes: ``E`` members, ``N`` agents, ``M`` sequences per agent, ``H`` steps, ``S`` state, ``A`` action.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Sequence

import torch

from planners.objectives import ACTION_HIGH, ACTION_LOW, BOX, MAX_SPEED, POS_DIMS, VEL_DIMS, ZONES, Params, _dims


class Constraint(IntEnum):
    """Which constraint a margin or a shield intervention is about; ``ShieldResult.constraint`` holds these."""

    NONE = 0
    """No constraint (not shielded, or no constraint given)."""
    NO_FLY_ZONE = 1
    """A circular no-fly zone (``ZONES``)."""
    STATE_BOX = 2
    """The agent's position box (``BOX``)."""
    SPEED = 3
    """The agent's speed limit (``MAX_SPEED``)."""
    AGENT_CONTACT = 4
    """Warehouse: contact with another robot or a human (``planners.fleet_shield``)."""
    SHELF = 5
    """Warehouse: contact with a shelf or wall (``planners.fleet_shield``)."""

    @property
    def reason(self) -> str | None:
        """The API's name for it: 'no_fly_zone', 'state_box', 'speed', 'agent_contact', 'shelf', or None."""
        return None if self is Constraint.NONE else self.name.lower()


KINDS = (Constraint.NO_FLY_ZONE, Constraint.STATE_BOX, Constraint.SPEED)
"""The constraint kinds in the order ``kind_margins`` lays them out on its last axis."""


def constrained(params: Params) -> bool:
    """Whether ``params`` carries any state constraint (zones, a box or a speed limit) to check."""
    return any(key in params for key in (ZONES, BOX, MAX_SPEED))


def kind_margins(states: torch.Tensor, params: Params, pos_dims: Sequence[int] = POS_DIMS,
                 vel_dims: Sequence[int] | None = VEL_DIMS) -> torch.Tensor:
    """Each state's margin to each constraint kind.

    Args:
        states: (X, N, R, S): any leading axis X, N agents (params' first axis), R states per agent.
        vel_dims: None for a model without velocity dims (its speed margins are +inf).

    Returns:
        (X, N, R, 3) margins in ``KINDS`` order; +inf where the agent has no such constraint.
    """
    pos = states[..., _dims(pos_dims)]  # (X, N, R, 2)
    inf = states.new_full(states.shape[:-1], float("inf"))
    zones, box, limit = params.get(ZONES), params.get(BOX), params.get(MAX_SPEED)
    zone = inf
    if zones is not None and zones.shape[1]:
        dist = torch.linalg.vector_norm(pos[..., None, :] - zones[:, None, :, :2], dim=-1)  # (X, N, R, Z)
        radius = zones[:, None, :, 2]  # (N, 1, Z)
        zone = torch.where(radius > 0, dist - radius, float("inf")).amin(-1)
    inside = inf
    if box is not None:
        inside = torch.minimum(pos - box[:, None, 0], box[:, None, 1] - pos).amin(-1)  # (X, N, R)
    speed = inf
    if limit is not None and vel_dims is not None:
        speed = limit[:, None] - torch.linalg.vector_norm(states[..., _dims(vel_dims)], dim=-1)
    return torch.stack([zone, inside, speed], -1)


def margins(traj: torch.Tensor, params: Params, pos_dims: Sequence[int] = POS_DIMS,
            vel_dims: Sequence[int] | None = VEL_DIMS,
            slack: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The worst margin of each sequence over members, steps and constraint kinds, and its kind.

    Args:
        traj: (E, N, M, H, S) predicted states (E members, or 1 for a single trajectory).
        slack: (N, M, H) distance taken off the position constraints' margins (zones and box) at each
            step: the shield's allowance for the members' disagreement.

    Returns:
        ((N, M) worst margin, +inf without constraints; (N, M) int8 ``Constraint`` of that margin,
        ``Constraint.NONE`` where it is +inf).
    """
    e, n, m, h, s = traj.shape
    per_kind = kind_margins(traj.reshape(e, n, m * h, s), params, pos_dims, vel_dims)  # (E, N, M*H, 3)
    if slack is not None:
        positional = torch.tensor([1.0, 1.0, 0.0], device=traj.device)  # zones and box, not speed
        per_kind = per_kind - slack.reshape(1, n, m * h, 1) * positional
    per_kind = per_kind.view(e, n, m, h, len(KINDS)).permute(1, 2, 4, 0, 3).flatten(3)  # (N, M, 3, E*H)
    worst, kind = per_kind.amin(-1).min(-1)  # (N, M)
    code = torch.where(torch.isinf(worst) & (worst > 0), 0, kind + 1).to(torch.int8)
    return worst, code


def project(actions: torch.Tensor, params: Params | None, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Clamp actions into the model's box and each agent's own bounds, in place.

    Args:
        actions: (N, K, H, A), (N, H, A) or (N, A).
        params: may hold ``ACTION_LOW``/``ACTION_HIGH`` (N, A), intersected with the box.
        low, high: (A,) the model's action box.

    Returns:
        ``actions``, clamped.
    """
    lo, hi = (params or {}).get(ACTION_LOW), (params or {}).get(ACTION_HIGH)
    if lo is None and hi is None:
        return actions.clamp_(low, high)
    view = (actions.shape[0],) + (1,) * (actions.dim() - 2) + (actions.shape[-1],)  # (N, 1.., A)
    lo = low if lo is None else torch.maximum(lo, low).view(view)
    hi = high if hi is None else torch.minimum(hi, high).view(view)
    return actions.clamp_(lo, hi)
