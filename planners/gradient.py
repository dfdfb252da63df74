"""Gradient-based MPC, the original article's planner, batched over agents and restarts.

Action sequences are parameterised through tanh so they always lie inside the
action box, and optimised with Adam by backpropagating the simulated return
through the world model. K restarts per agent (one from the warm start) guard
against poor local optima; the best restart wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from planners.base import BasePlanner, PlanConfig, State
from planners.objectives import ActionPolicy, Objective, Params
from planners.prior import make_prior


@dataclass(frozen=True)
class GradientConfig:
    """Settings of the gradient planner."""

    lr: float = 0.1
    """Adam step size on the unsquashed actions."""
    init_std: float = 0.5
    """Spread of the random restarts in unsquashed (pre-tanh) units."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")


class GradientPlanner(BasePlanner):
    """Gradient MPC; with a ``prior`` policy (and ``cfg.prior_share`` > 0) the last restarts start from its rollouts."""

    def __init__(self, dynamics: torch.nn.Module, objective: Objective, action_low: torch.Tensor,
                 action_high: torch.Tensor, cfg: PlanConfig = PlanConfig(propagation="expectation"),
                 grad: GradientConfig = GradientConfig(), prior: ActionPolicy | None = None, **kwargs) -> None:
        super().__init__(dynamics, objective, action_low, action_high, cfg, **kwargs)
        self.grad = grad
        self.prior = make_prior(prior, dynamics, cfg, self.low, self.high)

    def _squash(self, u: torch.Tensor) -> torch.Tensor:
        return self.low + (torch.tanh(u) + 1) / 2 * (self.high - self.low)

    def _unsquash(self, actions: torch.Tensor) -> torch.Tensor:
        unit = ((actions - self.low) / (self.high - self.low) * 2 - 1).clamp(-0.999, 0.999)
        return torch.atanh(unit)

    def _start(self, obs: torch.Tensor, warm_start: torch.Tensor | None) -> State:
        n, (k, h), a = obs.shape[0], (self.cfg.samples, self.cfg.horizon), self.act_dim
        centre = self._unsquash(self.initial_plan(n) if warm_start is None else warm_start.to(self.device))
        noise = torch.randn((n, k, h, a), generator=self.generator, device=self.device) * self.grad.init_std
        noise[:, 0] = 0  # restart 0 starts exactly at the warm start
        u = (centre[:, None] + noise).requires_grad_(True)  # (N, K, H, A) unsquashed actions
        return {"u": u, "opt": torch.optim.Adam([u], lr=self.grad.lr), "first": True}

    def _round(self, obs: torch.Tensor, params: Params, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        u = state["u"]
        if state.pop("first", False):
            # Restarts from inside the bounds, the last few from the prior's rollouts (before any step).
            u.data = self._unsquash(self._start_points(obs, params, state))
        with torch.enable_grad():  # plan() runs under no_grad; only this planner differentiates
            candidates = self._squash(u)  # (N, K, H, A)
            returns = self._score(obs, candidates, params)  # (N, K)
            (u.grad,) = torch.autograd.grad(-returns.sum(), u)
        state["opt"].step()
        # Project the stepped actions into each agent's bounds (projected gradient ascent).
        u.data = self._unsquash(self._project(self._squash(u.detach()), params))
        return candidates.detach(), returns.detach()

    def _start_points(self, obs: torch.Tensor, params: Params, state: State) -> torch.Tensor:
        """The first round's (N, K, H, A) restarts: ``_start``'s, the prior's in the last slots, projected."""
        start = self._squash(state["u"].detach())
        if self.prior is not None:
            self.prior.fill(start, obs, params, state, self.generator)
        return self._project(start, params)
