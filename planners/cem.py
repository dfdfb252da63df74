"""Cross-entropy method (PETS), sampling iCEM's coloured noise by default.

Each round samples K sequences per agent around a Gaussian, keeps the best
``elites`` and refits the Gaussian to them, smoothed with the previous fit.
"""

from __future__ import annotations

import time

import torch

from planners.base import BasePlanner, PlanConfig, State
from planners.config import CEMConfig
from planners.noise import coloured_noise
from planners.objectives import ActionPolicy, Objective, Params
from planners.prior import make_prior
from worldmodel.nn import variance


SHRUNK_SAMPLES = 8
"""The fewest candidates per agent a shrunk round samples (``CEMPlanner``'s ``shrink``): fewer and the late call's
held plan, the warm start, is as good a bet."""


class CEMPlanner(BasePlanner):
    """CEM; with a ``prior`` policy (and ``cfg.prior_share`` > 0) part of each round's samples are its rollouts.

    ``shrink``: a call whose first round would end past its deadline samples as many candidates as fit in the time
    left (at the measured cost per candidate for this N, and at least ``SHRUNK_SAMPLES``) rather than none: CEM's
    candidates are independent draws, so fewer of them are a smaller search, not a broken one. Without it (or when
    fewer than ``SHRUNK_SAMPLES`` fit) no round runs and the fallback acts (``BasePlanner``).
    """

    def __init__(self, dynamics: torch.nn.Module, objective: Objective, action_low: torch.Tensor,
                 action_high: torch.Tensor, cfg: PlanConfig = PlanConfig(), cem: CEMConfig = CEMConfig(),
                 prior: ActionPolicy | None = None, shrink: bool = False, **kwargs) -> None:
        super().__init__(dynamics, objective, action_low, action_high, cfg, **kwargs)
        self.shrink = shrink
        self.cem = cem
        self.elites = min(cem.elites, cfg.samples)
        self.prior = make_prior(prior, dynamics, cfg, self.low, self.high)

    def _start(self, obs: torch.Tensor, warm_start: torch.Tensor | None) -> State:
        n, h = obs.shape[0], self.cfg.horizon
        mean = self.initial_plan(n) if warm_start is None else warm_start.to(self.device)  # (N, H, A)
        std = (self.cem.init_std * (self.high - self.low) / 2).expand(n, h, self.act_dim)  # (N, H, A)
        return {"mean": mean, "std": std}

    def _first_round_samples(self) -> int:
        full = super()._first_round_samples()
        if full or not self.shrink or not self._round_ms.get(self._n):
            return full
        fits = int(self.cfg.samples * (self._deadline - time.perf_counter()) * 1000 / self._round_ms[self._n])
        return fits if fits >= SHRUNK_SAMPLES else 0

    def _round(self, obs: torch.Tensor, params: Params, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        n, (k, h), a = obs.shape[0], (self._samples, self.cfg.horizon), self.act_dim
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
        idx = returns.topk(min(self.elites, k), dim=1).indices  # (N, elites)
        elites = candidates.gather(1, idx[..., None, None].expand(-1, -1, h, a))  # (N, elites, H, A)
        state["mean"] = self._project(alpha * mean + (1 - alpha) * elites.mean(1), params)  # (N, H, A)
        state["std"] = alpha * std + (1 - alpha) * variance(elites, 1).sqrt()
        return candidates, returns
