"""Objectives: what a plan is worth, as a sum of reward terms; constraint costs are negative terms.

Terms score transitions laid out as (X, N, R, D): X a leading axis (ensemble
members or 1), N agents, R rollouts per agent. Per-agent parameters (goals,
no-fly zones) travel in ``params`` as tensors of shape (N, ...) and broadcast
over X and R, so one batched call serves agents with different goals.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch

from worldmodel.reward import FoldedReward, RewardModel

Params = dict[str, torch.Tensor]
"""Per-agent objective parameters; each value has the agent axis N first."""

ActionPolicy = Callable[[torch.Tensor, Params], torch.Tensor]
"""An action for each agent: obs (N, S), params (per-agent goals and constraints) -> actions (N, A).
What a planner's fallback, a planning prior and policy-only serving call (``planners.policy.PolicyNet.act``);
spelled here, beside Params, so the shield, the prior and the base planner share one definition."""

GOAL = "goal"
"""(N, G) goal position per agent, for GoalReward."""
ZONES = "zones"
"""(N, Z, 3) circular no-fly zones per agent: centre x, y and radius (radius 0 pads unused slots)."""
ZONE_MAP = "zone_map"
"""(N, G*G) a latent model's learned zone map per agent (``worldmodel.latent``), for its breach term."""
BOX = "box"
"""(N, 2, 2) position box per agent, [[xlo, ylo], [xhi, yhi]]; +-inf where an agent has none."""
MAX_SPEED = "max_speed"
"""(N,) speed limit per agent (norm of the velocity dims); inf where an agent has none."""
ACTION_LOW = "action_low"
"""(N, A) per-agent lower action bound, within the model's action box (``constraints.project``)."""
ACTION_HIGH = "action_high"
"""(N, A) per-agent upper action bound, within the model's action box."""

POS_DIMS = (0, 1)
"""Nav2D's position dims in the observation (``worldmodel.envs.nav2d.POS_DIMS``, spelled here so the
planners load without gymnasium); the default of every position term."""
VEL_DIMS = (2, 3)
"""Nav2D's velocity dims (``worldmodel.envs.nav2d.VEL_DIMS``); the default of every speed term."""


class Term(Protocol):
    def __call__(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor,
                 params: Params) -> torch.Tensor:
        """Reward of each transition: (X, N, R, *) -> (X, N, R).

        The inputs may be views of a rollout's own buffers, which it reuses for later steps: a term
        reads them during the call and copies whatever it keeps.
        """
        ...


def _dims(dims: Sequence[int]) -> slice | list[int]:
    """Contiguous dimensions as a slice, so selecting them is a view rather than a gathered copy."""
    dims = list(dims)
    contiguous = bool(dims) and dims[0] >= 0 and dims == list(range(dims[0], dims[0] + len(dims)))
    return slice(dims[0], dims[0] + len(dims)) if contiguous else dims


def _param(params: Params, key: str, term: str) -> torch.Tensor:
    try:
        return params[key]
    except KeyError:
        raise ValueError(f"{term} needs the per-agent parameter {key!r}; got {sorted(params)}") from None


class LearnedReward:
    """A learned reward model r(s, a, s'), averaged over its members: the world model's own, or one trained
    apart from it (``Objective.with_reward``)."""

    def __init__(self, model: RewardModel | FoldedReward) -> None:
        self.model = model

    def __call__(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor,
                 params: Params) -> torch.Tensor:
        lead = obs.shape[:-1]
        flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
        rewards = self.model(flat(obs), flat(action), flat(new_obs))  # (members, B)
        return (rewards[0] if len(rewards) == 1 else rewards.mean(0)).view(lead)

    def prepared(self) -> "LearnedReward":
        """This term through the reward model's folded inference form (``RewardModel.folded``)."""
        return LearnedReward(self.model.folded()) if isinstance(self.model, RewardModel) else self


class GoalReward:
    """Minus the distance from the reached position to each agent's goal (Nav2D's reward)."""

    def __init__(self, pos_dims: Sequence[int] = POS_DIMS) -> None:
        self.pos_dims = _dims(pos_dims)

    def __call__(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor,
                 params: Params) -> torch.Tensor:
        goal = _param(params, GOAL, "GoalReward")[:, None, :]  # (N, 1, G)
        return -torch.linalg.vector_norm(new_obs[..., self.pos_dims] - goal, dim=-1)


class NoFlyZones:
    """Cost of entering circular zones: ``weight`` per unit of depth inside (radius + margin),
    plus ``weight`` for every step inside the zone itself.

    The margin keeps plans clear of the edge, so model error does not carry the
    agent across it; the linear depth gives gradient-based planners a slope; the
    step cost makes even a grazing entry expensive for sampling planners.
    """

    def __init__(self, pos_dims: Sequence[int] = POS_DIMS, weight: float = 100.0, margin: float = 0.3) -> None:
        self.pos_dims, self.weight, self.margin = _dims(pos_dims), weight, margin

    def __call__(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor,
                 params: Params) -> torch.Tensor:
        zones = _param(params, ZONES, "NoFlyZones")  # (N, Z, 3)
        pos = new_obs[..., None, self.pos_dims]  # (X, N, R, 1, 2)
        dist = torch.linalg.vector_norm(pos - zones[:, None, :, :2], dim=-1)  # (X, N, R, Z)
        radius = zones[:, None, :, 2]  # (N, 1, Z)
        # Padding slots (radius 0) cost nothing: dist < 0 never holds, and their depth is masked.
        # Out of place: gradient MPC differentiates through the ReLU, whose backward reads its output.
        depth = torch.relu(radius + self.margin - dist) * (radius > 0)
        return -self.weight * (depth + (dist < radius)).sum(-1)


class AgentBox:
    """Cost of leaving each agent's position box ``params[BOX]``: ``weight`` per unit of distance
    outside the box shrunk by ``margin``, plus ``weight`` for every step outside the box itself.

    Shaped like ``NoFlyZones`` for the same reasons. Agents without a box (+-inf bounds, or no
    ``BOX`` key at all) cost nothing, so one objective serves agents with and without one.
    """

    def __init__(self, pos_dims: Sequence[int] = POS_DIMS, weight: float = 100.0, margin: float = 0.3) -> None:
        self.pos_dims, self.weight, self.margin = _dims(pos_dims), weight, margin

    def __call__(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor,
                 params: Params) -> torch.Tensor:
        box = params.get(BOX)
        if box is None:
            return new_obs.new_zeros(new_obs.shape[:-1])
        pos = new_obs[..., self.pos_dims]  # (X, N, R, 2)
        low, high = box[:, None, 0], box[:, None, 1]  # (N, 1, 2)
        # relu(-inf) is 0: an absent side costs nothing.
        depth = torch.relu(low + self.margin - pos) + torch.relu(pos - high + self.margin)
        outside = ((pos < low) | (pos > high)).any(-1)
        return -self.weight * (depth.sum(-1) + outside)


class SpeedLimit:
    """Cost of exceeding each agent's speed limit ``params[MAX_SPEED]``: ``weight`` per unit of speed
    over (limit - ``margin``), plus ``weight`` for every step over the limit itself. Agents without a
    limit (inf, or no ``MAX_SPEED`` key) cost nothing."""

    def __init__(self, vel_dims: Sequence[int] = VEL_DIMS, weight: float = 100.0, margin: float = 0.1) -> None:
        self.vel_dims, self.weight, self.margin = _dims(vel_dims), weight, margin

    def __call__(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor,
                 params: Params) -> torch.Tensor:
        limit = params.get(MAX_SPEED)
        if limit is None:
            return new_obs.new_zeros(new_obs.shape[:-1])
        speed = torch.linalg.vector_norm(new_obs[..., self.vel_dims], dim=-1)  # (X, N, R)
        limit = limit[:, None]  # (N, 1)
        return -self.weight * (torch.relu(speed - limit + self.margin) + (speed > limit))


class StateBox:
    """Cost of leaving a box on some state dimensions: ``weight`` per unit outside."""

    def __init__(self, dims: Sequence[int], low: Sequence[float], high: Sequence[float],
                 weight: float = 100.0) -> None:
        if not len(dims) == len(low) == len(high):
            raise ValueError(f"dims, low and high must have equal lengths, got {len(dims)}, {len(low)}, {len(high)}")
        self.dims, self.weight = list(dims), weight
        self.low, self.high = torch.tensor(low), torch.tensor(high)

    def __call__(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor,
                 params: Params) -> torch.Tensor:
        x = new_obs[..., self.dims]
        low, high = self.low.to(x), self.high.to(x)
        return -self.weight * (torch.relu(low - x) + torch.relu(x - high)).sum(-1)


class Objective:
    """The sum of reward and constraint terms."""

    def __init__(self, terms: Sequence[Term]) -> None:
        if not terms:
            raise ValueError("an Objective needs at least one term")
        self.terms = list(terms)

    def with_reward(self, model: RewardModel | FoldedReward) -> "Objective":
        """This objective with its learned reward term reading ``model`` in place of the world model's own
        reward (a reward model trained and registered on its own, ``worldmodel.reward_registry``).

        Raises:
            ValueError: the objective has no learned reward term (e.g. Nav2D's 'goal').
        """
        if not any(isinstance(t, LearnedReward) for t in self.terms):
            raise ValueError("this objective has no learned reward term for a reward model to replace")
        return Objective([LearnedReward(model) if isinstance(t, LearnedReward) else t for t in self.terms])

    def prepared(self) -> "Objective":
        """The objective for one planning call, which evaluates it at every horizon step: learned terms
        through their models' inference forms, folded once here rather than checked at every step."""
        return Objective([t.prepared() if isinstance(t, LearnedReward) else t for t in self.terms])

    def __call__(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor,
                 params: Params) -> torch.Tensor:
        total = self.terms[0](obs, action, new_obs, params)
        for term in self.terms[1:]:
            total = total + term(obs, action, new_obs, params)
        return total
