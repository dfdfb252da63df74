"""Random shooting: the baseline. Uniform sequences in the action box; keep the best."""

from __future__ import annotations

import time

import torch

from planners.base import BasePlanner, best_of
from planners.objectives import Params


class ShootingPlanner(BasePlanner):
    def _optimise(self, obs: torch.Tensor, params: Params | None,
                  warm_start: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int]:
        n, (k, h), a = obs.shape[0], (self.cfg.samples, self.cfg.horizon), self.act_dim
        params = params or {}
        best = best_returns = None
        iterations = 0
        for _ in range(self.cfg.iterations):
            if iterations and self._spent():
                break
            start = time.perf_counter()
            u = torch.rand((n, k, h, a), generator=self.generator, device=self.device)
            candidates = self.low + u * (self.high - self.low)  # (N, K, H, A)
            if warm_start is not None and iterations == 0:
                candidates[:, 0] = warm_start  # the shifted previous plan competes too
            returns = self.rollout.returns(obs, candidates, params, self.generator)  # (N, K)
            best, best_returns = best_of(candidates, returns, best, best_returns)
            iterations += 1
            self._timed(start)
        assert best is not None and best_returns is not None
        return best, best_returns, iterations
