"""Closed-loop evaluation: N envs in lockstep, one batched planning call per step for all of them.

Shapes: ``N`` agents (envs), ``S`` state, ``H`` horizon, ``A`` action, ``Z`` no-fly zones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium
import numpy as np
import torch
from tqdm import tqdm

from planners import OBJECTIVES, make_planner, shift_plan
from planners.base import BasePlanner, Decision, PlanResult
from planners.config import EvalConfig
from planners.objectives import (GOAL, ZONES, ActionPolicy, AgentBox, GoalReward, LearnedReward, NoFlyZones,
                                 Objective, Params, SpeedLimit)
from planners.rollout import HIDDEN, is_recurrent
from planners.shield import Shield
from worldmodel.envs import NAV2D_ID, make_env
from worldmodel.envs.nav2d import GOAL_DIMS
from worldmodel.model import WorldModel


def build_objective(model: WorldModel, objective: str = "learned", zones: bool = False) -> Objective:
    """The planning objective for ``model``'s env, plus the constraints' costs.

    Args:
        objective: 'learned' (the model's reward model) or 'goal' (Nav2D's reward: minus the distance
            to each agent's goal).
        zones: add the costs of Nav2D's constraints: no-fly zones, each agent's position box and speed
            limit (the last two cost nothing for agents without them).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if objective == "goal" and model.spec.env_id != NAV2D_ID:
        raise ValueError(f"the 'goal' objective is defined for {NAV2D_ID} only, not {model.spec.env_id}")
    terms = [LearnedReward(model.reward) if objective == "learned" else GoalReward()]
    if zones:
        if model.spec.env_id != NAV2D_ID:
            raise ValueError(f"no-fly zones exist in {NAV2D_ID} only, not {model.spec.env_id}")
        terms += [NoFlyZones(), AgentBox(), SpeedLimit()]
    return Objective(terms)


def agent_params(env_id: str, obs: torch.Tensor, infos: dict[str, Any]) -> Params:
    """Per-agent objective parameters read from the envs: Nav2D's goals (in obs) and zones (in info)."""
    if env_id != NAV2D_ID:
        return {}
    params = {GOAL: obs[:, GOAL_DIMS]}
    if "no_fly_zones" in infos:
        params[ZONES] = torch.as_tensor(np.asarray(infos["no_fly_zones"]), dtype=obs.dtype, device=obs.device)
    return params


@dataclass
class EvalResult:
    """Closed-loop statistics over completed episodes."""

    episodes: int
    mean_return: float
    success_rate: float
    violations: int
    """Steps spent inside a no-fly zone, over the completed episodes."""
    episodes_with_violation: int
    fallbacks: int
    """Agent-steps on which the fallback policy acted."""
    steps: int
    shield_interventions: int = 0
    """Agent-steps on which the shield replaced the action about to be returned."""
    predicted_violations: int = 0
    """Agent-steps whose returned action was still predicted to violate a constraint (margin < 0)."""
    plan_ms_mean: float = 0.0
    plan_ms_p99: float = 0.0
    plans_per_s: float = 0.0
    """Agent decisions per second of planning time."""
    returns: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class EvalStep:
    """One lockstep step of ``closed_loop``, handed to its ``on_step`` (for logging and plots)."""

    obs: torch.Tensor
    """(N, S) the observations planned from."""
    params: Params
    """The per-agent objective parameters planned with (Nav2D's goals and zones)."""
    result: PlanResult
    """The planning call's answer for all N agents."""
    ended: np.ndarray
    """(N,) bool: the agent's episode ended on this step (terminated or truncated)."""
    reset: np.ndarray
    """(N,) bool: this step only reset the agent's env (gymnasium's next-step autoreset); its action was ignored."""


class _Tally:
    """The statistics of the counted episodes, updated step by step.

    The episodes counted are the first ``episodes`` to start, whatever their outcome. Counting the
    first to end instead would miss failures, which end last (at the time limit).
    """

    def __init__(self, agents: int, episodes: int) -> None:
        self.agents, self.episodes = agents, episodes
        self.returns: list[float] = []
        self.successes: list[bool] = []
        self.violations = self.violators = self.fallbacks = self.steps = self.shielded = self.predicted = 0
        self.plan_ms: list[float] = []
        self.ep_return, self.ep_violations = np.zeros(agents), np.zeros(agents, int)  # (N,) the current episodes'
        self.counting = np.arange(agents) < episodes  # (N,) whether each env's current episode is counted
        self.started = int(self.counting.sum())

    @property
    def finished(self) -> bool:
        return len(self.returns) >= self.episodes

    def add(self, result: PlanResult, rew: np.ndarray, ended: np.ndarray, reset: np.ndarray,
            infos: dict[str, Any]) -> None:
        """Count one step of every env; ``ended`` and ``reset`` are (N,) masks (see ``EvalStep``)."""
        live = ~reset & self.counting
        self.plan_ms.append(result.elapsed_ms)
        self.fallbacks += int(result.fallback.cpu().numpy()[live].sum())
        self.shielded += int((result.decision.cpu().numpy() == Decision.SHIELDED)[live].sum())
        self.predicted += int((result.margin.cpu().numpy() < 0)[live].sum())
        self.steps += int(live.sum())
        self.ep_return += np.where(live, rew, 0.0)
        self.ep_violations += np.asarray(infos.get("violation", np.zeros(self.agents, bool)), bool) & live
        for i in np.flatnonzero(ended & self.counting):  # statistics count completed episodes only
            self.returns.append(float(self.ep_return[i]))
            self.successes.append(bool(np.asarray(infos["is_success"])[i]) if "is_success" in infos else False)
            self.violations += int(self.ep_violations[i])
            self.violators += int(self.ep_violations[i] > 0)
        self.ep_return[ended], self.ep_violations[ended] = 0.0, 0
        for i in np.flatnonzero(ended):  # the next episode counts while fewer than `episodes` have started
            self.counting[i] = self.started < self.episodes
            self.started += int(self.counting[i])

    def result(self) -> EvalResult:
        ms = np.asarray(self.plan_ms)
        return EvalResult(
            episodes=len(self.returns), mean_return=float(np.mean(self.returns)),
            success_rate=float(np.mean(self.successes)), violations=self.violations,
            episodes_with_violation=self.violators, fallbacks=self.fallbacks, steps=self.steps,
            shield_interventions=self.shielded, predicted_violations=self.predicted,
            plan_ms_mean=float(ms.mean()), plan_ms_p99=float(np.percentile(ms, 99)),
            plans_per_s=float(self.agents * len(ms) / (ms.sum() / 1000)), returns=self.returns)


def _planner(model: WorldModel, cfg: EvalConfig, policy: ActionPolicy | None) -> BasePlanner:
    """``cfg``'s planner on the model's dynamics, for ``cfg``'s objective (and zones, when there are any):
    ``policy`` its fallback and prior, a shield when ``cfg.shield`` and there are zones to keep out of."""
    if cfg.mode == "policy" and policy is None:
        raise ValueError("mode 'policy' needs a policy; the model has none (train one with `wm policy train`)")
    zones = cfg.no_fly_zones > 0
    objective = build_objective(model, cfg.objective, zones=zones)
    low, high = torch.tensor(model.spec.act_low), torch.tensor(model.spec.act_high)
    shield = Shield(model.dynamics, cfg.shield_horizon) if cfg.shield and zones else None
    return make_planner(cfg.planner, model.dynamics, objective, low, high, cfg.plan, fallback=policy,
                        settings=cfg.settings, prior=policy, shield=shield)


def closed_loop(model: WorldModel, cfg: EvalConfig, progress: bool = False,
                on_step: Callable[[EvalStep], None] | None = None, policy: ActionPolicy | None = None) -> EvalResult:
    """Run ``cfg.agents`` envs of the model's env in lockstep until ``cfg.episodes`` episodes have ended.

    Args:
        model: the world model to plan with (its device is used).
        cfg: planner, agents N, episodes counted, objective, zones, mode, shield and seeds.
        progress: show a progress bar on stderr.
        on_step: called after each step with its ``EvalStep``.
        policy: e.g. ``PolicyNet.act``: the fallback (the zero action when None), the prior when
            ``cfg.plan.prior_share`` > 0, and what acts alone in mode 'policy'.
    """
    env_id, agents = model.spec.env_id, cfg.agents
    kwargs = {"num_no_fly_zones": cfg.no_fly_zones} if cfg.no_fly_zones else {}
    envs = gymnasium.vector.SyncVectorEnv([lambda: make_env(env_id, **kwargs) for _ in range(agents)])
    plan = _planner(model, cfg, policy)
    tally = _Tally(agents, cfg.episodes)
    obs_np, infos = envs.reset(seed=cfg.seed)
    decide = _decider(plan, cfg, model, env_id, obs_np, infos)
    warm_start: torch.Tensor | None = None
    reset = np.zeros(agents, bool)  # gymnasium's next-step autoreset: this step only resets these envs
    carry = _HiddenCarry(model, agents)
    bar = tqdm(total=cfg.episodes, desc=f"eval {cfg.planner}", disable=not progress, unit="ep")
    while not tally.finished:
        # Plan for all N agents in one call, each warm-started from its previous plan shifted by one step.
        obs = torch.as_tensor(obs_np, dtype=torch.float32, device=model.device)  # (N, S)
        params = carry.into(agent_params(env_id, obs, infos), reset)
        result = decide(obs, params, warm_start)
        carry.advance(obs, result.actions)
        warm_start = shift_plan(result.plan)  # (N, H, A)
        if reset.any():  # these envs now show a new episode's first obs: plan it from scratch
            warm_start[torch.as_tensor(reset, device=model.device)] = plan.initial_plan(int(reset.sum()))
        # Step every env, then count the step for the episodes it belongs to.
        obs_np, rew, term, trunc, infos = envs.step(result.actions.detach().cpu().numpy())
        ended = (term | trunc) & ~reset  # (N,)
        counted = len(tally.returns)
        tally.add(result, rew, ended, reset, infos)
        bar.update(len(tally.returns) - counted)
        if on_step is not None:
            on_step(EvalStep(obs, params, result, ended, reset))
        reset = ended
    bar.close()
    envs.close()
    return tally.result()


class _HiddenCarry:
    """Each agent's recurrent hidden state (N, E*Hd) across the closed loop, as the served fleet keeps it:
    fresh at an episode's start, advanced by every step's observation and action (nothing for other models)."""

    def __init__(self, model: WorldModel, agents: int) -> None:
        self.dynamics = model.dynamics if is_recurrent(model.dynamics) else None
        self.hidden = None if self.dynamics is None else self.dynamics.initial_state(agents)

    def into(self, params: Params, reset: np.ndarray) -> Params:
        """``params`` with the hidden states, the envs just reset (N,) starting fresh."""
        if self.hidden is None:
            return params
        self.hidden[torch.as_tensor(reset, device=self.hidden.device)] = 0.0
        return params | {HIDDEN: self.hidden}

    @torch.no_grad()
    def advance(self, obs: torch.Tensor, actions: torch.Tensor) -> None:
        """Every member's state after observing ``obs`` (N, S) and taking ``actions`` (N, A)."""
        if self.hidden is not None:
            self.hidden = self.dynamics.step(self.hidden, obs, actions.detach())[0]


def _decider(plan: BasePlanner, cfg: EvalConfig, model: WorldModel, env_id: str, obs: np.ndarray,
             infos: dict[str, Any]) -> Callable[[torch.Tensor, Params, torch.Tensor | None], PlanResult]:
    """How each step decides: plan (after one untimed warm-up call when there is a budget, so that the
    budget knows a round's duration), or the policy alone in mode 'policy'."""
    if cfg.mode == "policy":
        return lambda obs, params, warm_start: plan.act(obs, params)
    if cfg.plan.budget_ms is not None:
        first = torch.as_tensor(obs, dtype=torch.float32, device=model.device)
        plan.plan(first, agent_params(env_id, first, infos), budget_ms=float("inf"))
    return lambda obs, params, warm_start: plan.plan(obs, params, warm_start=warm_start)
