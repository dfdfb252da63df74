"""Random shooting: the baseline. Uniform sequences in the action box; keep the best."""

from __future__ import annotations

import torch

from planners.base import BasePlanner, PlanConfig, State
from planners.objectives import ActionPolicy, Objective, Params
from planners.prior import make_prior


class ShootingPlanner(BasePlanner):
    """Random shooting; with a ``prior`` policy (and ``cfg.prior_share`` > 0) the last samples are its rollouts."""

    def __init__(self, dynamics: torch.nn.Module, objective: Objective, action_low: torch.Tensor,
                 action_high: torch.Tensor, cfg: PlanConfig = PlanConfig(), prior: ActionPolicy | None = None,
                 **kwargs) -> None:
        super().__init__(dynamics, objective, action_low, action_high, cfg, **kwargs)
        self.prior = make_prior(prior, dynamics, cfg, self.low, self.high)

    def _start(self, obs: torch.Tensor, warm_start: torch.Tensor | None) -> State:
        return {"warm_start": warm_start}

    def _round(self, obs: torch.Tensor, params: Params, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        n, (k, h), a = obs.shape[0], (self.cfg.samples, self.cfg.horizon), self.act_dim
        u = torch.rand((n, k, h, a), generator=self.generator, device=self.device)
        candidates = self.low + u * (self.high - self.low)  # (N, K, H, A)
        warm_start = state.pop("warm_start", None)
        if warm_start is not None:
            candidates[:, 0] = warm_start  # the shifted previous plan competes in the first round
        if self.prior is not None:
            self.prior.fill(candidates, obs, params, state, self.generator)
        candidates = self._project(candidates, params)  # inside each agent's bounds
        return candidates, self._score(obs, candidates, params)
