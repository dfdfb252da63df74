"""Cross-entropy method (PETS), sampling iCEM's coloured noise by default.

Each round samples K sequences per agent around a Gaussian, keeps the best
``elites`` and refits the Gaussian to them, smoothed with the previous fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from planners.base import BasePlanner, PlanConfig, State
from planners.noise import coloured_noise
from planners.objectives import ActionPolicy, Objective, Params
from planners.prior import make_prior
from worldmodel.nn import variance


@dataclass(frozen=True)
class CEMConfig:
    """CEM's own settings.

    The defaults are iCEM's sampling (coloured noise, as wide as the action box), the setting the
    README's Nav2D results and the service use: its long coherent swerves go around pairs of no-fly
    zones that white noise at half the width leaves agents wedged between (PETS' white noise:
    ``noise_beta=0, init_std=0.5``).
    """

    elites: int = 20
    """Sequences kept per agent per round to refit the sampling distribution (at most the samples K)."""
    alpha: float = 0.1
    """Weight of the previous mean/std when refitting (smoothing; 0 = no memory)."""
    init_std: float = 1.0
    """Initial standard deviation, as a fraction of half the action range."""
    noise_beta: float = 2.0
    """Exponent of the noise spectrum 1/f^beta over the horizon: 0 white (PETS), 2 to 2.5 iCEM."""

    def __post_init__(self) -> None:
        if self.elites < 1:
            raise ValueError(f"elites must be >= 1, got {self.elites}")
        if not 0 <= self.alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha}")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")
        if self.noise_beta < 0:
            raise ValueError(f"noise_beta must be >= 0, got {self.noise_beta}")


class CEMPlanner(BasePlanner):
    """CEM; with a ``prior`` policy (and ``cfg.prior_share`` > 0) part of each round's samples are its rollouts."""

    def __init__(self, dynamics: torch.nn.Module, objective: Objective, action_low: torch.Tensor,
                 action_high: torch.Tensor, cfg: PlanConfig = PlanConfig(), cem: CEMConfig = CEMConfig(),
                 prior: ActionPolicy | None = None, **kwargs) -> None:
        super().__init__(dynamics, objective, action_low, action_high, cfg, **kwargs)
        self.cem = cem
        self.elites = min(cem.elites, cfg.samples)
        self.prior = make_prior(prior, dynamics, cfg, self.low, self.high)

    def _start(self, obs: torch.Tensor, warm_start: torch.Tensor | None) -> State:
        n, h = obs.shape[0], self.cfg.horizon
        mean = self.initial_plan(n) if warm_start is None else warm_start.to(self.device)  # (N, H, A)
        std = (self.cem.init_std * (self.high - self.low) / 2).expand(n, h, self.act_dim)  # (N, H, A)
        return {"mean": mean, "std": std}

    def _round(self, obs: torch.Tensor, params: Params, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        n, (k, h), a = obs.shape[0], (self.cfg.samples, self.cfg.horizon), self.act_dim
        mean, std, alpha = state["mean"], state["std"], self.cem.alpha
        # Sample candidates around the current distribution; the prior's rollouts replace the last few.
        noise = coloured_noise((n, k, h, a), self.cem.noise_beta, self.generator, self.device)
        noise[:, 0] = 0  # the current mean competes too: it is often better than any sample
        candidates = torch.addcmul(mean[:, None], std[:, None], noise, out=torch.empty_like(noise))
        if self.prior is not None:
            self.prior.fill(candidates, obs, params, state, self.generator)
        candidates = self._project(candidates, params)  # (N, K, H, A) inside each agent's bounds
        # Score them by simulated return.
        returns = self._score(obs, candidates, params)  # (N, K)
        # Refit the distribution to the elites, smoothed with the previous one.
        idx = returns.topk(self.elites, dim=1).indices  # (N, elites)
        elites = candidates.gather(1, idx[..., None, None].expand(-1, -1, h, a))  # (N, elites, H, A)
        state["mean"] = self._project(alpha * mean + (1 - alpha) * elites.mean(1), params)  # (N, H, A)
        state["std"] = alpha * std + (1 - alpha) * variance(elites, 1).sqrt()
        return candidates, returns
