"""Model-predictive path integral control (Williams et al., 2017), batched over agents.

Each round perturbs the current mean sequence with Gaussian noise and moves the
mean to the return-weighted average of the perturbed sequences. Returns are
normalised per agent before weighting, so one temperature suits any reward scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from planners.base import BasePlanner, PlanConfig, State
from planners.noise import coloured_noise
from planners.objectives import ActionPolicy, Objective, Params
from planners.prior import make_prior


@dataclass(frozen=True)
class MPPIConfig:
    """MPPI's own settings."""

    temperature: float = 0.05
    """Softmax temperature on per-agent normalised returns; smaller is greedier."""
    noise_std: float = 0.5
    """Perturbation standard deviation, as a fraction of half the action range."""
    noise_beta: float = 0.0
    """Spectral exponent of the perturbations along the horizon (0 white)."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.noise_std <= 0:
            raise ValueError(f"noise_std must be > 0, got {self.noise_std}")


class MPPIPlanner(BasePlanner):
    """MPPI; with a ``prior`` policy (and ``cfg.prior_share`` > 0) part of each round's samples are its rollouts."""

    def __init__(self, dynamics: torch.nn.Module, objective: Objective, action_low: torch.Tensor,
                 action_high: torch.Tensor, cfg: PlanConfig = PlanConfig(), mppi: MPPIConfig = MPPIConfig(),
                 prior: ActionPolicy | None = None, **kwargs) -> None:
        super().__init__(dynamics, objective, action_low, action_high, cfg, **kwargs)
        self.mppi = mppi
        self.prior = make_prior(prior, dynamics, cfg, self.low, self.high)

    def _start(self, obs: torch.Tensor, warm_start: torch.Tensor | None) -> State:
        mean = self.initial_plan(obs.shape[0]) if warm_start is None else warm_start.to(self.device)
        return {"mean": mean}  # (N, H, A)

    def _round(self, obs: torch.Tensor, params: Params, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        n, (k, h), a = obs.shape[0], (self.cfg.samples, self.cfg.horizon), self.act_dim
        std = self.mppi.noise_std * (self.high - self.low) / 2  # (A,)
        # Perturb the mean (the first candidate is the mean itself); the prior's rollouts replace the last few.
        noise = coloured_noise((n, k, h, a), self.mppi.noise_beta, self.generator, self.device)
        noise[:, 0] = 0
        candidates = torch.addcmul(state["mean"][:, None], std, noise, out=torch.empty_like(noise))
        if self.prior is not None:
            self.prior.fill(candidates, obs, params, state, self.generator)
        candidates = self._project(candidates, params)  # (N, K, H, A) inside each agent's bounds
        returns = self._score(obs, candidates, params)  # (N, K)
        # Weight by return, normalised per agent, and average.
        top = returns.max(1, keepdim=True).values
        spread = (top - returns.min(1, keepdim=True).values).clamp_min(1e-8)
        weights = torch.softmax((returns - top) / spread / self.mppi.temperature, dim=1)  # (N, K)
        state["mean"] = self._project((weights[..., None, None] * candidates).sum(1), params)  # (N, H, A)
        return candidates, returns
