"""The shield: a post-posed check of the action about to be returned against the request's constraints.

Every sequence (the chosen one and its alternatives) is rolled through EVERY ensemble member's mean
prediction for a short horizon Hs; a sequence is safe when its worst margin over members, steps and
constraint kinds (``planners.constraints``) is at least ``clearance``. A chosen sequence predicted to
violate is replaced by the best safe alternative: the highest return under the members' mean over
Hs steps (the planner's objective), ties to the smallest change of the first action. When none is
safe, the sequence with the largest worst-case margin wins (the chosen one included, so the shield
never makes things worse by its own measure).

Shapes: ``E`` members, ``N`` agents, ``M`` alternatives per agent, ``Hs`` shield horizon, ``S``
state, ``A`` action.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from planners.constraints import margins, project
from planners.objectives import POS_DIMS, VEL_DIMS, ZONES, ActionPolicy, Objective, Params, _dims
from planners.rollout import _stepper

@dataclass(frozen=True)
class ShieldConfig:
    """The shield's settings beyond its horizon."""

    candidates: int = 4
    """The planner's best candidates of its last round offered as alternatives (their first Hs steps)."""
    clearance: float = 0.0
    """A sequence is safe when its worst predicted margin is at least this (model units: distance, speed)."""
    spread: float = 2.0
    """The members' disagreement on the position (the std over members of the predicted positions, norm
    over axes), times this, is taken off every position margin: where the model is unsure the shield
    keeps further away, and where members agree it costs nothing."""
    approach: float = 1.0
    """The sliding alternative closes on a zone's edge at most this fast per unit of distance to it (Nav2D:
    1/s), so it slows down as it nears the edge and then moves along it."""
    standoff: float = 0.5
    """...at this distance from the edge (model units): clear of the objectives' zone margin (0.3) and of
    the members' spread, so the slide stays both cheap and safe."""
    brake_gain: float = 10.0
    """The braking alternative's action: -brake_gain * velocity, clamped into the bounds. Nav2D's 10
    (1 / DT) stops within one step whenever the action box allows, full braking otherwise."""

    def __post_init__(self) -> None:
        if not isinstance(self.candidates, int) or self.candidates < 0:
            raise ValueError(f"candidates must be an integer >= 0, got {self.candidates!r}")
        if self.clearance < 0:
            raise ValueError(f"clearance must be >= 0, got {self.clearance}")
        if self.spread < 0:
            raise ValueError(f"spread must be >= 0, got {self.spread}")
        if self.standoff < 0:
            raise ValueError(f"standoff must be >= 0, got {self.standoff}")
        if self.approach <= 0:
            raise ValueError(f"approach must be > 0, got {self.approach}")
        if self.brake_gain <= 0:
            raise ValueError(f"brake_gain must be > 0, got {self.brake_gain}")


@dataclass(frozen=True)
class ShieldResult:
    """The shield's verdict per agent.

    Attributes:
        actions: (N, A) the action to take: the chosen one, or the replacement's first.
        shielded: (N,) True where the chosen sequence was replaced.
        constraint: (N,) int8 ``Constraint`` the chosen sequence was predicted to violate where
            shielded (the worst one), 0 elsewhere.
        margin: (N,) worst predicted margin of the returned sequence (+inf without constraints).
    """

    actions: torch.Tensor
    shielded: torch.Tensor
    constraint: torch.Tensor
    margin: torch.Tensor


class Shield:
    """Checks chosen action sequences against constraints with the ensemble's worst member.

    Args:
        dynamics: the planner's ensemble (members' mean predictions); a recurrent one steps every member
            from its part of each agent's hidden state ``params[HIDDEN]``.
        horizon: Hs, steps checked ahead.
        pos_dims, vel_dims: where the state holds the position and the velocity (None: no velocity,
            so no speed limit and no braking alternative).
        objective: ranks safe alternatives; None until ``bind`` (the base planner binds its own).
        cfg: the other settings.
    """

    def __init__(self, dynamics: torch.nn.Module, horizon: int = 5, pos_dims: Sequence[int] = POS_DIMS,
                 vel_dims: Sequence[int] | None = VEL_DIMS, objective: Objective | None = None,
                 cfg: ShieldConfig = ShieldConfig()) -> None:
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
        self.dynamics, self.horizon, self.objective, self.cfg = dynamics, horizon, objective, cfg
        self.pos_dims, self.vel_dims = _index(pos_dims), None if vel_dims is None else _index(vel_dims)

    def bind(self, objective: Objective) -> "Shield":
        """This shield ranking by ``objective`` unless it was given its own."""
        if self.objective is not None:
            return self
        return Shield(self.dynamics, self.horizon, self.pos_dims, self.vel_dims, objective, self.cfg)

    @torch.no_grad()
    def check(self, obs: torch.Tensor, seqs: torch.Tensor,
              params: Params) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Roll sequences through every member: obs (N, S), seqs (N, M, Hs, A) ->
        (trajectories (E, N, M, Hs, S) of the states reached, worst margins (N, M), their int8 kinds (N, M))."""
        n, m, hs, a = seqs.shape
        model = _stepper(self.dynamics, params, n, m)  # a recurrent one from each agent's hidden state
        acts = seqs.reshape(n * m, hs, a)  # (R, Hs, A)
        state = obs[:, None].expand(n, m, obs.shape[-1]).reshape(n * m, -1)  # (R, S), shared by members
        states = []
        for t in range(hs):  # each member follows its own states after the first step
            state = model.mean(state, acts[:, t])  # (E, R, S)
            states.append(state)
        traj = torch.stack(states, 2).view(len(state), n, m, hs, -1)  # (E, N, M, Hs, S)
        slack = None
        if self.cfg.spread and len(traj) > 1:
            spread = traj[..., list(self.pos_dims)].std(0, unbiased=False)  # (N, M, Hs, 2)
            slack = self.cfg.spread * torch.linalg.vector_norm(spread, dim=-1)  # (N, M, Hs)
        worst, kind = margins(traj, params, self.pos_dims, self.vel_dims, slack)
        return traj, worst, kind

    @torch.no_grad()
    def apply(self, obs: torch.Tensor, chosen: torch.Tensor, alternatives: torch.Tensor,
              params: Params) -> ShieldResult:
        """Pass or replace each agent's chosen sequence.

        Args:
            obs: (N, S); chosen: (N, Hs, A); alternatives: (N, M, Hs, A), M >= 1.
        """
        if chosen.shape[1] != self.horizon or alternatives.shape[2] != self.horizon:
            raise ValueError(f"sequences must have the shield's horizon {self.horizon}, got chosen "
                             f"{tuple(chosen.shape)} and alternatives {tuple(alternatives.shape)}")
        seqs = torch.cat([chosen[:, None], alternatives], 1)  # (N, 1+M, Hs, A); 0 is the chosen one
        traj, worst, kind = self.check(obs, seqs, params)
        safe = worst >= self.cfg.clearance  # NaN margins (a diverging model) are unsafe
        pick = torch.zeros(len(obs), dtype=torch.long, device=obs.device)  # (N,) 0 keeps the chosen one
        if not bool(safe[:, 0].all()):
            pick = torch.where(safe[:, 0], 0, self._best_safe(obs, seqs, traj, safe, params))
            pick = torch.where(safe.any(1), pick, torch.nan_to_num(worst, nan=-torch.inf).argmax(1))
        rows = torch.arange(len(pick), device=pick.device)
        shielded = pick != 0
        return ShieldResult(seqs[rows, pick, 0], shielded, torch.where(shielded, kind[:, 0], 0).to(torch.int8),
                            worst[rows, pick])

    def _best_safe(self, obs: torch.Tensor, seqs: torch.Tensor, traj: torch.Tensor, safe: torch.Tensor,
                   params: Params) -> torch.Tensor:
        """(N,) index of the best safe alternative (1..M; arbitrary where none is safe): highest return
        under the members' mean, ties to the smallest change of the first action."""
        if self.objective is None:
            raise ValueError("the shield has no objective to rank alternatives: pass one or bind() it")
        n, m, hs, a = seqs.shape
        after = traj.mean(0)  # (N, M, Hs, S)
        before = torch.cat([obs[:, None, None].expand(n, m, 1, -1), after[:, :, :-1]], 2)
        flat = lambda x: x.reshape(1, n, m * hs, x.shape[-1])  # noqa: E731  (1, N, M*Hs, D)
        returns = self.objective(flat(before), flat(seqs), flat(after), params)[0].view(n, m, hs).sum(-1)
        returns = torch.where(safe, torch.nan_to_num(returns, nan=-torch.inf), -torch.inf)
        returns[:, 0] = -torch.inf  # the chosen one is unsafe wherever this pick is used
        top = returns.max(1, keepdim=True).values  # (N, 1)
        tied = returns >= top - 1e-6 * top.abs().clamp_min(1.0)
        change = torch.linalg.vector_norm(seqs[:, :, 0] - seqs[:, :1, 0], dim=-1)  # (N, M)
        return torch.where(tied, change, torch.inf).argmin(1)

    @torch.no_grad()
    def guard(self, obs: torch.Tensor, chosen: torch.Tensor, params: Params, low: torch.Tensor, high: torch.Tensor,
              extra: list[torch.Tensor], candidates: torch.Tensor | None = None) -> ShieldResult:
        """``apply`` with the standard alternatives: braking, escaping, the zero action, ``extra`` sequences
        (N, Hs, A) each (the policy's rollout), and the planner's ``candidates`` (N, C, H, A).

        Args:
            obs: (N, S); chosen: (N, Hs, A); low, high: (A,) the model's action box.
        """
        zero = project(torch.zeros_like(chosen), params, low, high)
        alternatives = [self.braking(obs, params, low, high)[:, None], self.escape(obs, params, low, high)[:, None],
                        zero[:, None]]
        alternatives += [x[:, None] for x in extra]
        if candidates is not None:
            alternatives.append(first_steps(candidates, self.horizon))
        return self.apply(obs, chosen, torch.cat(alternatives, 1), params)

    @torch.no_grad()
    def rollout(self, obs: torch.Tensor, policy: ActionPolicy, params: Params, low: torch.Tensor,
                high: torch.Tensor) -> torch.Tensor:
        """A policy's actions, closed loop through the members' mean for Hs steps: (N, Hs, A), projected."""
        model, state, acts = _stepper(self.dynamics, params, len(obs)), obs, []
        for _ in range(self.horizon):
            acts.append(project(policy(state, params).clone(), params, low, high))
            state = model.mean(state, acts[-1]).mean(0)
        return torch.stack(acts, 1)

    def braking(self, obs: torch.Tensor, params: Params, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """(N, Hs, A): accelerate against the predicted velocity (the zero action for models whose
        actions do not act on ``vel_dims``)."""
        a = low.shape[-1]
        if self.vel_dims is None or len(self.vel_dims) != a:
            return project(obs.new_zeros(len(obs), self.horizon, a), params, low, high)
        vel, gain = _dims(self.vel_dims), self.cfg.brake_gain
        return self.rollout(obs, lambda s, p: -gain * s[..., vel], params, low, high)

    def slide(self, obs: torch.Tensor, policy: ActionPolicy, params: Params, low: torch.Tensor,
              high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, Hs, A): ``policy``'s actions, closed loop, with the normal component towards the nearest zone
        raised where needed so the agent closes on its edge at most ``approach`` x the distance (a control
        barrier's condition), and as much added along the edge: the policy's way to the goal, sliding
        around the zones in it. The policy's own rollout for models whose actions do not act on the
        position's axes, or without zones.

        Returns:
            ((N, Hs, A) the sequence, (N,) bool: whether the first action differs from the policy's).
        """
        a = low.shape[-1]
        zones = params.get(ZONES)
        if zones is None or not zones.shape[1] or self.vel_dims is None or len(self.pos_dims) != a:
            return self.rollout(obs, policy, params, low, high), obs.new_zeros(len(obs), dtype=torch.bool)
        pos, vel, gain, rate = _dims(self.pos_dims), _dims(self.vel_dims), self.cfg.brake_gain, self.cfg.approach
        standoff, first = self.cfg.standoff, []

        def barred(state: torch.Tensor, p: Params) -> torch.Tensor:
            action = policy(state, p)  # (N, A)
            normal, edge = _nearest_zone(state[:, pos], p[ZONES])
            gap = (edge - standoff).clamp_min(0)  # (N,) inf for agents without zones
            closing = (state[:, vel] * normal).sum(-1)  # (N,) outward speed, negative while approaching
            needed = gain * (-rate * gap - closing)  # (N,) outward acceleration that keeps the condition
            own = (action * normal).sum(-1)
            raise_by = torch.nan_to_num((needed - own).clamp_min(0), posinf=0.0)[:, None]  # (N, 1)
            # As much again along the edge, the way the agent already moves there (else the way the policy
            # leans), so a blocked push turns into going around rather than stopping, or dithering, at the edge.
            tangent = torch.stack([-normal[:, 1], normal[:, 0]], -1)  # (N, 2)
            along = gain * (state[:, vel] * tangent).sum(-1, keepdim=True) + (action * tangent).sum(-1, keepdim=True)
            lean = torch.where(along < 0, -1.0, 1.0)
            first.append(raise_by[:, 0] > 0)
            return action + raise_by * (normal + lean * tangent)

        return self.rollout(obs, barred, params, low, high), first[0]

    def escape(self, obs: torch.Tensor, params: Params, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """(N, Hs, A): full acceleration straight away from the nearest zone's centre (by its edge), the way
        out for an agent already inside one, where braking would hold it there (the zero action for models
        whose actions do not act on the position's axes, or without zones)."""
        a = low.shape[-1]
        zones = params.get(ZONES)
        if zones is None or len(self.pos_dims) != a:
            return project(obs.new_zeros(len(obs), self.horizon, a), params, low, high)
        pos, gain = _dims(self.pos_dims), self.cfg.brake_gain

        def away(state: torch.Tensor, p: Params) -> torch.Tensor:
            return gain * _nearest_zone(state[:, pos], p[ZONES])[0]

        return self.rollout(obs, away, params, low, high)


def _nearest_zone(position: torch.Tensor, zones: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each agent's nearest zone by its edge: position (N, 2), zones (N, Z, 3) -> ((N, 2) unit vector from
    that zone's centre to the agent, (N,) distance to its edge, +inf where the agent has no zone)."""
    offset = position[:, None] - zones[..., :2]  # (N, Z, 2)
    dist = torch.linalg.vector_norm(offset, dim=-1)  # (N, Z)
    edge = torch.where(zones[..., 2] > 0, dist - zones[..., 2], torch.inf)
    near = edge.argmin(1)[:, None]  # (N, 1)
    normal = (offset / dist[..., None].clamp_min(1e-6)).gather(1, near[..., None].expand(-1, 1, 2))[:, 0]
    return normal, edge.gather(1, near)[:, 0]


def first_steps(seqs: torch.Tensor, hs: int) -> torch.Tensor:
    """The first ``hs`` steps of (..., H, A) sequences, the last action held where H < hs: (..., hs, A)."""
    if seqs.shape[-2] >= hs:
        return seqs[..., :hs, :]
    return torch.cat([seqs, seqs[..., -1:, :].expand(*seqs.shape[:-2], hs - seqs.shape[-2], -1)], -2)


def _index(dims: Sequence[int] | slice) -> tuple[int, ...]:
    """State dims as a tuple of indices (``worldmodel.envs.nav2d`` spells them as slices)."""
    return tuple(range(dims.start or 0, dims.stop, dims.step or 1)) if isinstance(dims, slice) else tuple(dims)
