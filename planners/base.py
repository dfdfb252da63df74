"""The planner protocol, its result, and what every planner shares: budget, fallback and audit.

A planner decides for N agents at once. Each call samples or optimises K action
sequences of horizon H per agent, scores them by rolling the world model out,
and returns the first action of the best sequence plus what a caller needs to
audit the decision.

Dimension glossary: ``N`` agents, ``K`` candidate sequences, ``H`` horizon,
``E`` ensemble members, ``P`` particles, ``S`` state, ``A`` action.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from planners.objectives import Objective, Params
from planners.rollout import PROPAGATIONS, make_rollout

FallbackPolicy = Callable[[torch.Tensor], torch.Tensor]
"""Safe action for each agent: obs (N, S) -> actions (N, A)."""

State = dict[str, Any]
"""A planner's search state within one call (e.g. CEM's mean and std, each (N, H, A))."""


@dataclass(frozen=True)
class PlanConfig:
    """Settings every planner shares."""

    horizon: int = 15
    """H, steps simulated ahead."""
    samples: int = 200
    """K, candidate sequences per agent per iteration (restarts, for the gradient planner)."""
    iterations: int = 5
    """Optimisation rounds per call, unless the time budget ends them sooner."""
    propagation: str = "ts1"
    """How uncertainty flows through the ensemble: 'ts1', 'tsinf' or 'expectation' (PETS)."""
    particles: int = 1
    """P, sampled futures per candidate in the 'ts' modes (dealt to members round-robin; 'tsinf'
    needs a multiple of the ensemble size)."""
    budget_ms: float | None = None
    """Hard time budget per call; the best plan so far is returned when it is spent."""
    disagreement_threshold: float | None = None
    """Fall back when the chosen plan's mean ensemble disagreement exceeds this."""
    uncertainty_penalty: float = 0.0
    """Cost per unit of ensemble disagreement, subtracted from every step's reward."""
    seed: int = 0
    """Seed of the planner's random stream."""

    def __post_init__(self) -> None:
        for name in ("horizon", "samples", "iterations", "particles"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.propagation not in PROPAGATIONS:
            raise ValueError(f"propagation must be one of {', '.join(PROPAGATIONS)}, got {self.propagation!r}")
        if self.budget_ms is not None and self.budget_ms <= 0:
            raise ValueError(f"budget_ms must be > 0 or None, got {self.budget_ms}")
        if self.uncertainty_penalty < 0:
            raise ValueError(f"uncertainty_penalty must be >= 0, got {self.uncertainty_penalty}")


@dataclass
class PlanResult:
    """A batched decision and its audit trail.

    Attributes:
        actions: (N, A) the action to take now (the fallback's where ``fallback`` is set).
        plan: (N, H, A) the chosen action sequences (shift by one to warm-start the next call).
        trajectory: (N, H+1, S) predicted mean states along the chosen plan, starting at obs.
        disagreement: (N, H) ensemble disagreement along it (member variance in units of the
            model's typical one-step change; 0 when the members agree).
        expected_return: (N,) predicted return of the chosen plan.
        fallback: (N,) True where the fallback policy acted instead of the plan.
        iterations: optimisation rounds completed.
        elapsed_ms: wall time of the call.
        rollout_ms: the part of it spent simulating candidates (the batched rollouts' forward passes;
            on a GPU, which runs them asynchronously, the time to launch them).
    """

    actions: torch.Tensor
    plan: torch.Tensor
    trajectory: torch.Tensor
    disagreement: torch.Tensor
    expected_return: torch.Tensor
    fallback: torch.Tensor
    iterations: int
    elapsed_ms: float
    rollout_ms: float = 0.0


class Planner(Protocol):
    def plan(self, obs: torch.Tensor, params: Params | None = None,
             warm_start: torch.Tensor | None = None) -> PlanResult:
        """Plan for N agents. obs: (N, S); warm_start: (N, H, A) previous plans, already shifted."""
        ...


def shift_plan(plan: torch.Tensor) -> torch.Tensor:
    """Warm start for the next step: drop the executed action, repeat the last one. (N, H, A) -> (N, H, A)."""
    return torch.cat([plan[:, 1:], plan[:, -1:]], dim=1)


def zero_action(low: torch.Tensor, high: torch.Tensor) -> FallbackPolicy:
    """The default fallback: zero action (clamped into the bounds)."""
    safe = torch.zeros_like(low).clamp(low, high)
    return lambda obs: safe.expand(obs.shape[0], -1)


class BasePlanner:
    """Shared machinery: budget, fallback, audit and the anytime loop of rounds.

    A planner implements ``_start`` (its search state for a call) and ``_round`` (propose
    candidates, score them, update the state); no round starts that would end past the deadline.
    """

    def __init__(self, dynamics: torch.nn.Module, objective: Objective, action_low: torch.Tensor,
                 action_high: torch.Tensor, cfg: PlanConfig, fallback: FallbackPolicy | None = None) -> None:
        device = next(dynamics.buffers()).device
        self.cfg = cfg
        self.low = torch.as_tensor(action_low, dtype=torch.float32, device=device)
        self.high = torch.as_tensor(action_high, dtype=torch.float32, device=device)
        self.act_dim = self.low.shape[0]
        self.rollout = make_rollout(dynamics, objective, cfg.propagation, cfg.particles, cfg.uncertainty_penalty)
        self.fallback_policy = fallback or zero_action(self.low, self.high)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.device = device
        # Measured durations per batch size N (exponential moving averages, ms), so that no round
        # starts that would end past the deadline and the audit's time is reserved.
        self._round_ms: dict[int, float] = {}
        self._audit_ms: dict[int, float] = {}
        self._n = 0
        self._deadline = float("inf")
        self._rollout_s = 0.0

    @torch.no_grad()
    def plan(self, obs: torch.Tensor, params: Params | None = None, warm_start: torch.Tensor | None = None,
             budget_ms: float | None = None) -> PlanResult:
        """Plan for N agents; ``budget_ms`` overrides the configured budget for this call.

        The first call for a new N measures a round even when it cannot know whether one fits;
        call once untimed (a warm-up) before serving under a budget.
        """
        start = time.perf_counter()
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        n, h = obs.shape[0], self.cfg.horizon
        if obs.dim() != 2 or obs.shape[1] != self.rollout.dynamics.obs_dim:
            raise ValueError(f"obs must be (N, S) with S = {self.rollout.dynamics.obs_dim}, got {tuple(obs.shape)}")
        if warm_start is not None and warm_start.shape != (n, h, self.act_dim):
            raise ValueError(f"warm_start must be (N, H, A) = ({n}, {h}, {self.act_dim}), got "
                             f"{tuple(warm_start.shape)}")
        budget = budget_ms if budget_ms is not None else self.cfg.budget_ms
        self._n, self._rollout_s = n, 0.0
        self._deadline = (start + (budget - self._audit_ms.get(n, 0.0)) / 1000 if budget is not None
                          else float("inf"))
        if self._spent():
            # Not even one round fits: act safely now rather than answer late.
            best, returns, iterations = self.initial_plan(n), torch.full((n,), float("-inf"), device=self.device), 0
        else:
            best, returns, iterations = self._optimise(obs, params, warm_start)
        audit_start = time.perf_counter()
        trajectory, disagreement = self.rollout.audit(obs, best, params)
        _ema(self._audit_ms, n, self._elapsed_ms(audit_start))
        fallback = torch.full((n,), iterations == 0, device=self.device)
        if self.cfg.disagreement_threshold is not None:
            fallback |= disagreement.mean(1) > self.cfg.disagreement_threshold
        actions = torch.where(fallback[:, None], self.fallback_policy(obs), best[:, 0])
        return PlanResult(actions, best, trajectory, disagreement, returns, fallback, iterations,
                          (time.perf_counter() - start) * 1000, self._rollout_s * 1000)

    def _optimise(self, obs: torch.Tensor, params: Params | None,
                  warm_start: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The anytime loop: rounds until the iteration cap or the deadline, keeping each agent's best.

        Returns:
            (best plans (N, H, A), their returns (N,), rounds completed).
        """
        state = self._start(obs, warm_start)
        best = best_returns = None
        rounds = 0
        while rounds < self.cfg.iterations and not (rounds and self._spent()):
            start = time.perf_counter()
            candidates, returns = self._round(obs, params or {}, state)  # (N, K, H, A), (N, K)
            best, best_returns = best_of(candidates, returns, best, best_returns)
            rounds += 1
            self._timed(start)
        assert best is not None and best_returns is not None
        return best, best_returns, rounds

    def _start(self, obs: torch.Tensor, warm_start: torch.Tensor | None) -> State:
        """The planner's search state for this call (a sampling distribution, restarts, ...)."""
        raise NotImplementedError

    def _round(self, obs: torch.Tensor, params: Params, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        """One round: propose candidates (N, K, H, A), score them (N, K), update ``state`` in place."""
        raise NotImplementedError

    def _score(self, obs: torch.Tensor, candidates: torch.Tensor, params: Params) -> torch.Tensor:
        """Simulated return of each candidate: (N, K)."""
        start = time.perf_counter()
        returns = self.rollout.returns(obs, candidates, params, self.generator)
        self._rollout_s += time.perf_counter() - start
        return returns

    def _spent(self) -> bool:
        """True when one more round, at its measured duration for this N, would end past the deadline."""
        if self._deadline == float("inf"):
            return False
        return time.perf_counter() + self._round_ms.get(self._n, 0.0) / 1000 > self._deadline

    def _timed(self, round_start: float) -> None:
        """Fold the duration of a finished round into the estimate for this N."""
        _ema(self._round_ms, self._n, self._elapsed_ms(round_start))

    def _elapsed_ms(self, since: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # kernels are asynchronous; time what actually ran
        return (time.perf_counter() - since) * 1000

    def initial_plan(self, n: int) -> torch.Tensor:
        """(N, H, A) sequences of the action box's centre: where a fresh agent starts without a warm start."""
        return ((self.low + self.high) / 2).expand(n, self.cfg.horizon, -1).clone()

    def _clamp(self, actions: torch.Tensor) -> torch.Tensor:
        """``actions`` clamped into the action box, in place: sampled sequences, laid out as their noise was."""
        return actions.clamp_(self.low, self.high)


def _ema(store: dict[int, float], key: int, value: float, weight: float = 0.2) -> None:
    """Update a moving average; the first value is taken as is."""
    store[key] = value if key not in store else (1 - weight) * store[key] + weight * value


def best_of(candidates: torch.Tensor, returns: torch.Tensor, best: torch.Tensor | None,
            best_returns: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep, per agent, the best sequence seen so far.

    Args:
        candidates: (N, K, H, A); returns: (N, K); best: (N, H, A) or None; best_returns: (N,) or None.
    """
    top, idx = returns.max(dim=1)  # (N,)
    top_seq = candidates[torch.arange(len(idx), device=idx.device), idx]  # (N, H, A)
    if best is None or best_returns is None:
        return top_seq, top
    better = top > best_returns
    return torch.where(better[:, None, None], top_seq, best), torch.where(better, top, best_returns)
