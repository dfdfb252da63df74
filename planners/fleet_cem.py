"""Fleet CEM: one Gaussian per robot over its (H, A) plan, K samples per robot, each robot's own elites.

Sample k of every robot together is one joint candidate: the scorer steps all robots of it at once
and scores each robot by its own return in it (the coordinated planner's rollout scores each robot's
sample k beside the others' plans: ``FleetRollout(against_plans=True)``). Every robot then refits its
Gaussian to its own elites, and the first action of its refitted mean acts. Sample 0 is every robot's
current mean: the joint plan the fleet converged to so far competes in every round. Warm-started by the
previous plan shifted by one step, one round per tick suffices as in ``planners.cem``, whose settings
(``CEMConfig``: elites, smoothing, iCEM's coloured noise) this uses unchanged.

Not a ``BasePlanner``: that machinery (rollout, audit, shield, fallback) treats each agent's rollout
as independent of the others, while here a candidate is the whole floor's joint plan and its
state is a ``FloorState`` (tasks, humans, layout), not per-agent observations alone.

Shapes: ``N`` robots, ``K`` samples, ``H`` horizon, ``A`` action.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch

from planners.base import shift_plan
from planners.cem import CEMConfig
from planners.config import FleetPlanConfig
from planners.fleet_rollout import FloorState

FLEET_CEM = CEMConfig(elites=4, init_std=0.5)
"""CEM settings of the fleet planners: few elites and half-width sampling. With every robot sampling
around its plan, a wide spread or many elites average a robot's swerve left with its swerve right;
two robots head-on in an aisle then met (4 seeds, exact model without the bumper, each robot scored in
the joint samples: 1 contact with 20 elites or init_std 1.0, none with these)."""
from planners.noise import coloured_noise
from worldmodel.nn import variance

ACT_DIM = 2
"""A: a warehouse robot's action (acceleration command in [-1, 1]^2)."""


class FleetScorer(Protocol):
    def returns(self, state: FloorState, actions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Each robot's predicted return in each joint candidate: actions (K, N, H, A) -> (K, N)."""
        ...


@dataclass(frozen=True)
class FleetPlan:
    """One fleet planning call's answer."""

    actions: torch.Tensor
    """(N, A) the actions to take now."""
    plan: torch.Tensor
    """(N, H, A) each robot's plan (``shift`` it to warm-start the next call)."""
    expected_return: torch.Tensor
    """(N,) each robot's return in its best sample of the last round, as the scorer scored it."""
    iterations: int
    """Rounds completed."""
    elapsed_ms: float
    """Wall time of the call."""

    def shift(self) -> torch.Tensor:
        """Warm start for the next tick: the executed step dropped, the last repeated. (N, H, A)."""
        return shift_plan(self.plan)


class FleetCEM:
    """CEM over the joint plans of a floor's robots, scored by any ``FleetScorer``."""

    def __init__(self, scorer: FleetScorer, cfg: FleetPlanConfig = FleetPlanConfig(), cem: CEMConfig = FLEET_CEM,
                 device: torch.device | str = "cpu") -> None:
        self.scorer, self.cfg, self.cem = scorer, cfg, cem
        self.elites = min(cem.elites, cfg.samples)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)

    @torch.no_grad()
    def plan(self, state: FloorState, warm_start: torch.Tensor | None = None) -> FleetPlan:
        """Plan every robot of the floor. warm_start: (N, H, A) the previous plans, shifted."""
        start = time.perf_counter()
        n, (k, h), a = state.obs.shape[0], (self.cfg.samples, self.cfg.horizon), ACT_DIM
        if warm_start is not None and warm_start.shape != (n, h, a):
            raise ValueError(f"warm_start must be (N, H, A) = ({n}, {h}, {a}), got {tuple(warm_start.shape)}")
        mean = state.obs.new_zeros(n, h, a) if warm_start is None else warm_start.to(self.device).clone()
        std = torch.full_like(mean, self.cem.init_std)  # (N, H, A), half the action range is 1
        alpha, best = self.cem.alpha, None
        for _ in range(self.cfg.iterations):
            # Sample K joint candidates around every robot's Gaussian; sample 0 is the means themselves.
            noise = coloured_noise((n, k, h, a), self.cem.noise_beta, self.generator, self.device)
            noise[:, 0] = 0
            candidates = (mean[:, None] + std[:, None] * noise).clamp_(-1.0, 1.0)  # (N, K, H, A)
            # Score each robot by its own return in each joint candidate.
            returns = self.scorer.returns(state, candidates.transpose(0, 1), self.generator).T  # (N, K)
            # Refit every robot's Gaussian to its own elites, smoothed with the previous fit.
            top, idx = returns.topk(self.elites, dim=1)  # (N, elites)
            elites = candidates.gather(1, idx[..., None, None].expand(-1, -1, h, a))  # (N, elites, H, A)
            mean = alpha * mean + (1 - alpha) * elites.mean(1)
            std = alpha * std + (1 - alpha) * variance(elites, 1).sqrt()
            best = top[:, 0]
        assert best is not None
        return FleetPlan(mean[:, 0].clone(), mean, best, self.cfg.iterations, (time.perf_counter() - start) * 1000)
