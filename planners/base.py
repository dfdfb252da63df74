"""The planner protocol, its result, and what every planner shares: budget, fallback, shield and audit.

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
from enum import IntEnum
from typing import Any, Protocol

import torch

from planners.config import PlanConfig
from planners.constraints import Constraint, constrained, project
from planners.objectives import ActionPolicy, Objective, Params
from planners.rollout import make_rollout
from planners.shield import Shield, first_steps

FallbackPolicy = ActionPolicy
"""The planner's fallback: an ``ActionPolicy``."""

State = dict[str, Any]
"""A planner's search state within one call (e.g. CEM's mean and std, each (N, H, A))."""


class Fallback(IntEnum):
    """Why the fallback policy acted for an agent; ``PlanResult.fallback_reason`` holds these codes."""

    NONE = 0
    """The plan acted."""
    DEADLINE = 1
    """No optimisation round fit the time budget."""
    UNCERTAINTY = 2
    """The chosen plan's mean ensemble disagreement exceeded ``disagreement_threshold``."""
    ERROR = 3
    """Planning produced a non-finite plan or prediction (a diverging model)."""

    @property
    def reason(self) -> str | None:
        """The API's name for it: 'deadline', 'uncertainty', 'error', or None when the plan acted."""
        return None if self is Fallback.NONE else self.name.lower()


class Decision(IntEnum):
    """How an agent's action was decided; ``PlanResult.decision`` holds these codes."""

    PLANNED = 0
    """The plan's first action, passed by the shield (or no shield)."""
    FALLBACK = 1
    """The fallback policy's action (``PlanResult.fallback_reason`` says why), passed by the shield."""
    SHIELDED = 2
    """The shield replaced the planned or fallback action (``PlanResult.shield`` says which constraint)."""
    POLICY = 3
    """Policy-only: the policy's action without planning (``BasePlanner.act``), passed by the shield."""

    @property
    def label(self) -> str:
        """The API's name for it: 'planned', 'fallback', 'shielded' or 'policy'."""
        return self.name.lower()


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
        fallback_reason: (N,) int8 ``Fallback`` codes: why the fallback policy acted instead of the
            plan (``Fallback.NONE`` where the plan acted); ``fallback`` is its boolean view.
        decision: (N,) int8 ``Decision`` codes: planned, fallback, shielded or policy.
        shield: (N,) int8 ``planners.constraints.Constraint`` codes: the constraint the shield
            predicted the replaced action to violate (``Constraint.NONE`` where it did not act).
        margin: (N,) worst predicted constraint margin of the returned action's sequence over the
            shield's horizon and every member (+inf without a shield or without constraints).
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
    fallback_reason: torch.Tensor
    decision: torch.Tensor
    shield: torch.Tensor
    margin: torch.Tensor
    iterations: int
    elapsed_ms: float
    rollout_ms: float = 0.0

    @property
    def fallback(self) -> torch.Tensor:
        """(N,) True where the fallback policy acted instead of the plan."""
        return self.fallback_reason != Fallback.NONE


class Planner(Protocol):
    def plan(self, obs: torch.Tensor, params: Params | None = None,
             warm_start: torch.Tensor | None = None) -> PlanResult:
        """Plan for N agents. obs: (N, S); warm_start: (N, H, A) previous plans, already shifted."""
        ...


def shift_plan(plan: torch.Tensor) -> torch.Tensor:
    """Warm start for the next step: drop the executed action, repeat the last one. (N, H, A) -> (N, H, A)."""
    return torch.cat([plan[:, 1:], plan[:, -1:]], dim=1)


def zero_action(low: torch.Tensor, high: torch.Tensor) -> ActionPolicy:
    """The default fallback: zero action (clamped into the box; the planner projects it into each
    agent's own bounds)."""
    safe = torch.zeros_like(low).clamp(low, high)
    return lambda obs, params=None: safe.expand(obs.shape[0], -1)


class BasePlanner:
    """Shared machinery: budget, fallback, shield, audit and the anytime loop of rounds.

    A planner implements ``_start`` (its search state for a call) and ``_round`` (propose
    candidates, score them, update the state; ``_project`` them into the bounds after each update);
    no round starts that would end past the deadline.
    """

    def __init__(self, dynamics: torch.nn.Module, objective: Objective, action_low: torch.Tensor,
                 action_high: torch.Tensor, cfg: PlanConfig, fallback: ActionPolicy | None = None,
                 shield: Shield | None = None, hold_plan: bool = False) -> None:
        """``hold_plan``: without a ``fallback`` policy, an agent whose call misses its deadline (no round fits)
        acts on its warm start, its previous plan shifted (``fallback_source`` 'plan'), rather than the zero
        action: a double integrator given zero acceleration coasts on at its speed, wherever the plan was
        steering it (an agent without a finite warm start: the box centre). A fallback for another reason
        (disagreement, a diverging model) in a call that was in time still acts with zero."""
        device = next(dynamics.buffers()).device
        self.cfg = cfg
        self.low = torch.as_tensor(action_low, dtype=torch.float32, device=device)
        self.high = torch.as_tensor(action_high, dtype=torch.float32, device=device)
        self.act_dim = self.low.shape[0]
        self.rollout = make_rollout(dynamics, objective, cfg.propagation, cfg.particles, cfg.disagreement_penalty)
        self.fallback_policy = fallback or zero_action(self.low, self.high)
        self.hold_plan = hold_plan and fallback is None
        self.fallback_source = "policy" if fallback is not None else "plan" if self.hold_plan else "zero"
        """Who the fallback is: 'policy' (a given ActionPolicy), 'plan' (the previous plan when late, else zero)
        or 'zero' (the zero action)."""
        self._held: torch.Tensor | None = None  # (N, H, A) the warm starts acting for a late call
        self._samples = cfg.samples  # candidates per agent of this call's rounds (``_first_round_samples``)
        self.shield = None if shield is None else shield.bind(objective)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.device = device
        # Measured durations per batch size N (exponential moving averages, ms), so that no round
        # starts that would end past the deadline and the finish (audit, fallback, shield) is reserved.
        self._round_ms: dict[int, float] = {}
        self._finish_ms: dict[int, float] = {}
        self._n = 0
        self._deadline = float("inf")
        self._rollout_s = 0.0
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # last round's (N, K, H, A), (N, K)

    @torch.no_grad()
    def plan(self, obs: torch.Tensor, params: Params | None = None, warm_start: torch.Tensor | None = None,
             budget_ms: float | None = None) -> PlanResult:
        """Plan for N agents; ``budget_ms`` overrides the configured budget for this call.

        Order: optimise, audit the chosen plans, decide where the fallback acts (and call it as
        ``fallback(obs, params)``), then the shield checks whatever is about to be returned.
        The first call for a new N measures a round even when it cannot know whether one fits;
        call once untimed (a warm-up) before serving under a budget.
        """
        start = time.perf_counter()
        obs, params = self._checked(obs, warm_start), params or {}
        n = len(obs)
        budget = budget_ms if budget_ms is not None else self.cfg.budget_ms
        self._n, self._rollout_s, self._last, self._held = n, 0.0, None, None
        self._deadline = (start + (budget - self._finish_ms.get(n, 0.0)) / 1000 if budget is not None
                          else float("inf"))
        self._samples = self._first_round_samples()
        if not self._samples:
            # Not even one round fits: act safely now rather than answer late (hold_plan: on the previous plans).
            best = self.initial_plan(n)
            if self.hold_plan and warm_start is not None:
                best = self._held = self.held_plans(warm_start, params)
            returns, iterations = torch.full((n,), float("-inf"), device=self.device), 0
        else:
            best, returns, iterations = self._optimise(obs, params, warm_start)
        finish_start = time.perf_counter()
        trajectory, disagreement = self.rollout.audit(obs, best, params)
        reason = self._fallback_reason(iterations, best, trajectory, disagreement)
        fell = reason != Fallback.NONE
        decision = torch.where(fell, Decision.FALLBACK, Decision.PLANNED).to(torch.int8)
        actions, code, margin = self._decide(obs, params, best, fell, decision)
        _ema(self._finish_ms, n, self._elapsed_ms(finish_start))
        return PlanResult(actions, best, trajectory, disagreement, returns, reason, decision, code, margin,
                          iterations, (time.perf_counter() - start) * 1000, self._rollout_s * 1000)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, params: Params | None = None) -> PlanResult:
        """Policy-only: the fallback policy's action for N agents, shielded; no planning, no audit.

        ``plan`` holds the action for H steps, ``trajectory`` holds the current state, disagreement
        is zero and ``expected_return`` NaN: nothing was predicted beyond the shield's check.
        """
        start = time.perf_counter()
        obs, params = self._checked(obs, None), params or {}
        n, h = len(obs), self.cfg.horizon
        self._last = self._held = None
        decision = torch.full((n,), Decision.POLICY, dtype=torch.int8, device=self.device)
        actions, code, margin = self._decide(obs, params, None, torch.ones(n, dtype=torch.bool, device=self.device),
                                             decision)
        return PlanResult(actions, actions[:, None].expand(n, h, -1).clone(), obs[:, None].expand(n, h + 1, -1).clone(),
                          obs.new_zeros(n, h), obs.new_full((n,), float("nan")),
                          torch.zeros(n, dtype=torch.int8, device=self.device), decision, code, margin, 0,
                          (time.perf_counter() - start) * 1000)

    def _checked(self, obs: torch.Tensor, warm_start: torch.Tensor | None) -> torch.Tensor:
        """obs as a float32 (N, S) tensor on the planner's device; raises naming a wrong shape."""
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if obs.dim() != 2 or obs.shape[1] != self.rollout.dynamics.obs_dim:
            raise ValueError(f"obs must be (N, S) with S = {self.rollout.dynamics.obs_dim}, got {tuple(obs.shape)}")
        n, h = obs.shape[0], self.cfg.horizon
        if warm_start is not None and warm_start.shape != (n, h, self.act_dim):
            raise ValueError(f"warm_start must be (N, H, A) = ({n}, {h}, {self.act_dim}), got "
                             f"{tuple(warm_start.shape)}")
        return obs

    def _decide(self, obs: torch.Tensor, params: Params, best: torch.Tensor | None, fell: torch.Tensor,
                decision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The returned actions (N, A), shield codes (N,) int8 and margins (N,); marks shielded rows in
        ``decision``. ``best`` (N, H, A) is None for policy-only calls (``fell`` all True)."""
        n = len(obs)
        code = torch.zeros(n, dtype=torch.int8, device=self.device)
        margin = obs.new_full((n,), float("inf"))
        if self.shield is None or not constrained(params):  # nothing to check: every margin is +inf
            if best is None:
                return self._fallback_actions(obs, params), code, margin
            if not bool(fell.any()):
                return best[:, 0], code, margin
            return torch.where(fell[:, None], self._fallback_actions(obs, params), best[:, 0]), code, margin
        # What each agent would do for Hs steps: its plan, or for fallback rows the fallback's own
        # closed-loop rollout. Every member checks these; only the agents predicted to violate pay for
        # alternatives (most pass, so a shielded call costs about one more Hs-step check).
        shield, hs = self.shield, self.shield.horizon
        chosen = obs.new_empty(n, hs, self.act_dim) if best is None else first_steps(best, hs).clone()  # (N, Hs, A)
        if bool(fell.any()) and self._held is None:  # the fallback slides around zones in its way (a barrier
            # on its own actions); held plans are checked as plans are
            rows = fell.nonzero()[:, 0]
            chosen[rows], bent = shield.slide(obs[rows], self.fallback_policy, _rows(params, rows), self.low, self.high)
            code[rows[bent]] = Constraint.NO_FLY_ZONE
            decision[rows[bent]] = Decision.SHIELDED
        _, worst, _ = shield.check(obs, chosen[:, None], params)  # (N, 1)
        actions, margin = chosen[:, 0].clone(), worst[:, 0].clone()
        unsafe = ~(margin >= shield.cfg.clearance)  # NaN margins (a diverging model) are unsafe
        if bool(unsafe.any()):
            rows = unsafe.nonzero()[:, 0]
            sub = _rows(params, rows)
            extra = ([shield.rollout(obs[rows], self.fallback_policy, sub, self.low, self.high)]
                     if self.fallback_source == "policy" else [])
            top = self.top_candidates(shield.cfg.candidates)
            verdict = shield.guard(obs[rows], chosen[rows], sub, self.low, self.high, extra,
                                   None if top is None else top[0][rows])
            actions[rows], margin[rows] = verdict.actions, verdict.margin
            code[rows] = torch.where(verdict.shielded, verdict.constraint, code[rows])
            decision[rows[verdict.shielded]] = Decision.SHIELDED
        return actions, code, margin

    def _fallback_actions(self, obs: torch.Tensor, params: Params) -> torch.Tensor:
        """The fallback policy's actions (N, A), projected into the bounds (a late call's held plans' first)."""
        if self._held is not None:
            return self._held[:, 0].clone()
        return project(self.fallback_policy(obs, params).clone(), params, self.low, self.high)

    def top_candidates(self, m: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The best ``m`` candidates of the last call's last round and their returns: ((N, m', H, A),
        (N, m')) with m' = min(m, K), best first; None when no round ran (or m is 0)."""
        if self._last is None or m < 1:
            return None
        candidates, returns = self._last
        top, idx = returns.topk(min(m, returns.shape[1]), dim=1)  # (N, m')
        return candidates.gather(1, idx[..., None, None].expand(-1, -1, *candidates.shape[2:])), top

    def _fallback_reason(self, iterations: int, best: torch.Tensor, trajectory: torch.Tensor,
                         disagreement: torch.Tensor) -> torch.Tensor:
        """(N,) int8 ``Fallback`` codes; a missed deadline outranks an error, an error outranks disagreement.

        Args:
            best: (N, H, A) chosen plans; trajectory: (N, H+1, S); disagreement: (N, H).
        """
        n = len(best)
        reason = torch.full((n,), Fallback.NONE, dtype=torch.int8, device=self.device)
        if self.cfg.disagreement_threshold is not None:
            reason[disagreement.mean(1) > self.cfg.disagreement_threshold] = Fallback.UNCERTAINTY
        broken = ~(torch.isfinite(best).flatten(1).all(1) & torch.isfinite(trajectory).flatten(1).all(1))
        reason[broken] = Fallback.ERROR
        if iterations == 0:  # not even one round fit the budget: every agent acts safely now
            reason[:] = Fallback.DEADLINE
        return reason

    def _optimise(self, obs: torch.Tensor, params: Params,
                  warm_start: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The anytime loop: rounds until the iteration cap or the deadline, keeping each agent's best
        (and the last round's candidates, for the shield and explanations).

        Returns:
            (best plans (N, H, A), their returns (N,), rounds completed).
        """
        state = self._start(obs, warm_start)
        best = best_returns = None
        rounds = 0
        while rounds < self.cfg.iterations and not (rounds and self._spent()):
            start = time.perf_counter()
            candidates, returns = self._round(obs, params, state)  # (N, K, H, A), (N, K)
            best, best_returns = best_of(candidates, returns, best, best_returns)
            rounds += 1
            self._timed(start)
        assert best is not None and best_returns is not None
        self._last = (candidates, returns)
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

    def _first_round_samples(self) -> int:
        """Candidates per agent the call's first round samples: ``cfg.samples``, or 0 when a round, at its measured
        duration for this N, would end past the deadline (no round runs: the fallback acts). A planner whose
        rounds can shrink to fit says how many fit instead (``CEMPlanner``'s ``shrink``)."""
        return 0 if self._spent() else self.cfg.samples

    def _timed(self, round_start: float) -> None:
        """Fold the duration of a finished round into the estimate for this N, as the duration of a whole round
        (``cfg.samples`` candidates: a shrunk round's, scaled up)."""
        _ema(self._round_ms, self._n, self._elapsed_ms(round_start) * self.cfg.samples / self._samples)

    def _elapsed_ms(self, since: float) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # kernels are asynchronous; time what actually ran
        return (time.perf_counter() - since) * 1000

    def initial_plan(self, n: int) -> torch.Tensor:
        """(N, H, A) sequences of the action box's centre: where a fresh agent starts without a warm start."""
        return ((self.low + self.high) / 2).expand(n, self.cfg.horizon, -1).clone()

    def held_plans(self, warm_start: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """What a late call of a ``hold_plan`` planner acts on: the warm starts (N, H, A), projected; rows without a
        finite plan (NaN: none kept) start from the box centre, as a fresh agent does."""
        warm = warm_start.to(self.device)
        kept = torch.isfinite(warm).flatten(1).all(1)[:, None, None]
        return self._project(torch.where(kept, warm, self.initial_plan(len(warm))), params)

    def _project(self, actions: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """``actions`` (N, K, H, A), (N, H, A) or (N, A) projected, in place, into the action box and each
        agent's own bounds (``ACTION_LOW``/``ACTION_HIGH`` in params): call after every optimiser update."""
        return project(actions, params, self.low, self.high)


def _rows(params: Params, rows: torch.Tensor) -> Params:
    """The per-agent parameters of the agents at ``rows`` (every value has the agent axis first)."""
    return {key: value[rows] for key, value in params.items()}


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
