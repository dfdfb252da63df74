"""Random shooting: the baseline. Uniform sequences in the action box; keep the best."""

from __future__ import annotations

import torch

from planners.base import BasePlanner, State
from planners.objectives import Params


class ShootingPlanner(BasePlanner):
    def _start(self, obs: torch.Tensor, warm_start: torch.Tensor | None) -> State:
        return {"warm_start": warm_start}

    def _round(self, obs: torch.Tensor, params: Params, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        n, (k, h), a = obs.shape[0], (self.cfg.samples, self.cfg.horizon), self.act_dim
        u = torch.rand((n, k, h, a), generator=self.generator, device=self.device)
        candidates = self.low + u * (self.high - self.low)  # (N, K, H, A)
        warm_start = state.pop("warm_start", None)
        if warm_start is not None:
            candidates[:, 0] = warm_start  # the shifted previous plan competes in the first round
        return candidates, self._score(obs, candidates, params)
