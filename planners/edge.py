"""CEM on an exported model (``wm export --format onnx``): numpy and onnxruntime only, no torch, no Ray.

The served planner's algorithm and defaults (``PlanConfig``: one warm-started round over a 30-step
horizon, K 32, TS-1; CEM's: iCEM's coloured noise as wide as the action box, 20 elites, smoothing 0.1),
for a device that runs the exported graphs rather than fleetwm's torch stack. Each horizon step is one
dynamics session call for every agent, candidate and member together (TS-1: N*K rows dealt round-robin
to the E members, each simulating its own), plus one reward call when the objective is learned.

Not here: the shield, fallbacks and time budgets of ``planners.base``; per-agent action bounds.

Shapes: ``N`` agents, ``K`` candidates, ``H`` horizon, ``E`` members, ``R`` rows per member, ``S`` state,
``A`` action, ``Z`` zones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from planners.config import CEMConfig, PlanConfig
from planners.edge_models import EdgeModels
from planners.edge_objective import EdgeObjective, coloured_noise


@dataclass(frozen=True)
class EdgePlan:
    """A batched decision.

    Attributes:
        actions: (N, A) the action to take now.
        plan: (N, H, A) the chosen sequences (``shift_plan`` warm-starts the next call with them).
        expected_return: (N,) the chosen sequences' simulated return.
        elapsed_ms: wall time of the call.
        rollout_ms: the part of it spent in the rollouts (session calls and objective).
    """

    actions: np.ndarray
    plan: np.ndarray
    expected_return: np.ndarray
    elapsed_ms: float
    rollout_ms: float


def shift_plan(plan: np.ndarray) -> np.ndarray:
    """Warm start for the next step: drop the executed action, repeat the last. (N, H, A) -> (N, H, A)."""
    return np.concatenate([plan[:, 1:], plan[:, -1:]], axis=1)


@lru_cache(maxsize=16)
def _dealing(rows: int, members: int) -> np.ndarray:
    """(E, R) row of each member's slot: padded slot m = j*E + e holds row m mod rows, so row r follows member
    r mod E, and padding (repeats of the first rows) fills each member's share to R = ceil(rows / E)."""
    per = -(-rows // members)
    return (np.arange(per * members) % rows).reshape(per, members).T.copy()


class EdgeCEM:
    """CEM over exported ONNX models for N agents per call."""

    def __init__(self, models: EdgeModels, objective: EdgeObjective = EdgeObjective(),
                 cfg: PlanConfig = PlanConfig(), cem: CEMConfig = CEMConfig()) -> None:
        if cfg.propagation != "ts1":
            raise ValueError(f"the edge planner propagates 'ts1' (the served default), got {cfg.propagation!r}")
        if cfg.prior_share or cfg.disagreement_penalty or cfg.budget_ms is not None:
            raise ValueError("the edge planner has no policy prior, disagreement penalty or time budget; "
                             f"got prior_share={cfg.prior_share}, disagreement_penalty={cfg.disagreement_penalty}, "
                             f"budget_ms={cfg.budget_ms}")
        self.models, self.objective, self.cfg, self.cem = models, objective, cfg, cem
        spec = models.spec
        self.low, self.high, self.members = spec.act_low, spec.act_high, spec.members
        self.elites = min(cem.elites, cfg.samples)
        self.sampled = bool(models.manifest["probabilistic"])
        self.learned, self.analytic = objective.reward == "learned", objective.reward == "goal" or objective.zones
        self.rng = np.random.default_rng(cfg.seed)

    def initial_plan(self, n: int) -> np.ndarray:
        """(N, H, A) sequences of the action box's centre."""
        centre = ((self.low + self.high) / 2).astype(np.float32)
        return np.broadcast_to(centre, (n, self.cfg.horizon, len(centre))).copy()

    def plan(self, obs: np.ndarray, goal: np.ndarray | None = None, zones: np.ndarray | None = None,
             warm_start: np.ndarray | None = None) -> EdgePlan:
        """Plan for N agents.

        Args:
            obs: (N, S). goal: (N, 2), for the 'goal' objective. zones: (N, Z, 3) (cx, cy, r; r 0 pads),
                for an objective with zones. warm_start: (N, H, A) the previous plans, shifted.
        """
        start = time.perf_counter()
        obs = self._checked(obs, warm_start)
        n, h, a = len(obs), self.cfg.horizon, len(self.low)
        mean = self.initial_plan(n) if warm_start is None else np.asarray(warm_start, np.float32)  # (N, H, A)
        std = np.broadcast_to(self.cem.init_std * (self.high - self.low) / 2, (n, h, a)).astype(np.float32)
        best, best_return, rollout_s = mean, np.full(n, -np.inf, np.float32), 0.0
        for _ in range(self.cfg.iterations):
            # Sample candidates around the current distribution; the current mean competes too.
            noise = coloured_noise((n, self.cfg.samples, h, a), self.cem.noise_beta, self.rng)
            noise[:, 0] = 0
            candidates = self._clipped(mean[:, None] + std[:, None] * noise)  # (N, K, H, A)
            # Score them by simulated return.
            t0 = time.perf_counter()
            returns = self.returns(obs, candidates, goal, zones)  # (N, K)
            rollout_s += time.perf_counter() - t0
            # Keep each agent's best so far; refit the distribution to the elites, smoothed.
            top = returns.argmax(1)  # (N,)
            better = returns[np.arange(n), top] > best_return
            best = np.where(better[:, None, None], candidates[np.arange(n), top], best)
            best_return = np.where(better, returns[np.arange(n), top], best_return)
            idx = np.argpartition(-returns, self.elites - 1, axis=1)[:, :self.elites]  # (N, elites)
            elites = np.take_along_axis(candidates, idx[:, :, None, None], 1)  # (N, elites, H, A)
            alpha = self.cem.alpha
            mean = self._clipped(alpha * mean + (1 - alpha) * elites.mean(1))
            std = alpha * std + (1 - alpha) * elites.std(1)
        return EdgePlan(best[:, 0].copy(), best, best_return, (time.perf_counter() - start) * 1000, rollout_s * 1000)

    def returns(self, obs: np.ndarray, candidates: np.ndarray, goal: np.ndarray | None = None,
                zones: np.ndarray | None = None) -> np.ndarray:
        """Simulated return of each candidate, the mean over P particles (TS-1): (N, S), (N, K, H, A) -> (N, K)."""
        n, k, h, a = candidates.shape
        e, p, s = self.members, self.cfg.particles, obs.shape[1]
        rows = n * k * p
        dealt = _dealing(rows, e)  # (E, R) particle row of each member's slot
        agent = dealt // (k * p)  # (E, R)
        acts = np.ascontiguousarray(candidates.reshape(n * k, h, a)[dealt // p].transpose(2, 0, 1, 3))  # (H, E, R, A)
        state = np.ascontiguousarray(obs[agent])  # (E, R, S)
        goal_rows = None if goal is None else np.asarray(goal, np.float32)[agent]  # (E, R, 2)
        zone_rows = None if zones is None else np.asarray(zones, np.float32)[agent]  # (E, R, Z, 3)
        total = np.zeros(dealt.shape, np.float32)  # (E, R)
        noise = self.rng.standard_normal((h, *state.shape), dtype=np.float32) if self.sampled else None  # (H, E, R, S)
        for t in range(h):
            nxt, std = self.models.step(state, acts[t])  # (E, R, S) each, fresh arrays: drawn in place
            if noise is not None:
                nxt += np.multiply(std, noise[t], out=std)
            if self.analytic:
                total += self.objective.terms(nxt, goal_rows, zone_rows)
            if self.learned:
                total += self.models.reward(state.reshape(-1, s), acts[t].reshape(-1, a),
                                            nxt.reshape(-1, s)).reshape(e, -1)
            state = nxt
        return total.T.reshape(-1)[:rows].reshape(n, k, p).mean(-1)  # slots back in row order

    def _clipped(self, actions: np.ndarray) -> np.ndarray:
        """``actions`` (..., A) clipped in place into the action box."""
        return np.minimum(np.maximum(actions, self.low, out=actions), self.high, out=actions)

    def _checked(self, obs: np.ndarray, warm_start: np.ndarray | None) -> np.ndarray:
        obs = np.asarray(obs, np.float32)
        s, a = self.models.spec.obs_dim, len(self.low)
        if obs.ndim != 2 or obs.shape[1] != s:
            raise ValueError(f"obs must be (N, S) with S = {s}, got {obs.shape}")
        if warm_start is not None and np.shape(warm_start) != (len(obs), self.cfg.horizon, a):
            raise ValueError(f"warm_start must be (N, H, A) = ({len(obs)}, {self.cfg.horizon}, {a}), got "
                             f"{np.shape(warm_start)}")
        return obs
