"""Closed-loop evaluation: N envs in lockstep, one batched planning call per step for all of them.

Shapes: ``N`` agents (envs), ``H`` horizon, ``A`` action, ``Z`` no-fly zones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium
import numpy as np
import torch
from tqdm import tqdm

from planners import OBJECTIVES, PlanConfig, make_planner, shift_plan
from planners.objectives import GOAL, ZONES, GoalReward, LearnedReward, NoFlyZones, Objective, Params
from worldmodel.envs import NAV2D_ID, make_env
from worldmodel.envs.nav2d import GOAL_DIMS
from worldmodel.model import WorldModel


def build_objective(model: WorldModel, objective: str = "learned", zones: bool = False) -> Objective:
    """The planning objective for ``model``'s env, plus zone costs.

    Args:
        objective: 'learned' (the model's reward model) or 'goal' (Nav2D's reward: minus the distance
            to each agent's goal).
        zones: add the cost of Nav2D's no-fly zones.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if objective == "goal" and model.spec.env_id != NAV2D_ID:
        raise ValueError(f"the 'goal' objective is defined for {NAV2D_ID} only, not {model.spec.env_id}")
    terms = [LearnedReward(model.reward) if objective == "learned" else GoalReward()]
    if zones:
        if model.spec.env_id != NAV2D_ID:
            raise ValueError(f"no-fly zones exist in {NAV2D_ID} only, not {model.spec.env_id}")
        terms.append(NoFlyZones())
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
    plan_ms_mean: float
    plan_ms_p99: float
    plans_per_s: float
    """Agent decisions per second of planning time."""
    returns: list[float] = field(default_factory=list)


def closed_loop(model: WorldModel, planner: str, agents: int, episodes: int, cfg: PlanConfig,
                objective: str = "learned", no_fly_zones: int = 0, seed: int = 0, progress: bool = False,
                on_step: Callable[[dict[str, Any]], None] | None = None,
                settings: dict[str, Any] | None = None) -> EvalResult:
    """Run ``agents`` envs of the model's env in lockstep until ``episodes`` episodes have ended.

    Args:
        model: the world model to plan with (its device is used).
        planner: 'cem', 'mppi', 'gradient' or 'shooting'.
        agents: N, envs stepped together, planned for in one call per step.
        episodes: episodes counted: the first ``episodes`` to start (summed over agents), each run to its end.
        cfg: planner settings.
        objective: 'learned' (the model's reward model) or 'goal' (Nav2D's true reward).
        no_fly_zones: Nav2D zones per episode (0: off); their costs join the objective.
        seed: seeds the envs and the planner.
        on_step: called after each step with the obs planned from, the objective parameters, the
            plan result and the ``done`` / ``reset`` masks (N,) of that step (for logging and plots).
        settings: the planner's own settings (``make_planner``), e.g. CEM's ``noise_beta``.
    """
    if agents < 1 or episodes < 1:
        raise ValueError(f"agents and episodes must be >= 1, got {agents} and {episodes}")
    env_id = model.spec.env_id
    kwargs = {"num_no_fly_zones": no_fly_zones} if no_fly_zones else {}
    envs = gymnasium.vector.SyncVectorEnv([lambda: make_env(env_id, **kwargs) for _ in range(agents)])
    plan = make_planner(planner, model.dynamics, build_objective(model, objective, zones=no_fly_zones > 0), torch.tensor(model.spec.act_low),
                        torch.tensor(model.spec.act_high), cfg, settings=settings)
    device = model.device
    obs_np, infos = envs.reset(seed=seed)
    warm_start: torch.Tensor | None = None
    returns, successes, violations, violators = [], [], 0, 0
    ep_return, ep_violations = np.zeros(agents), np.zeros(agents, int)
    fallbacks, steps, plan_ms = 0, 0, []
    reset_next = np.zeros(agents, bool)  # gymnasium's next-step autoreset: this step only resets these envs
    # The episodes counted are the first `episodes` to start, whatever their outcome. Counting the
    # first to end instead would miss failures, which end last (at the time limit).
    counting = np.arange(agents) < episodes  # (N,) whether each env's current episode is counted
    started = int(counting.sum())
    bar = tqdm(total=episodes, desc=f"eval {planner}", disable=not progress, unit="ep")
    while len(returns) < episodes:
        obs = torch.as_tensor(obs_np, dtype=torch.float32, device=device)
        params = agent_params(env_id, obs, infos)
        result = plan.plan(obs, params, warm_start=warm_start)
        plan_ms.append(result.elapsed_ms)
        warm_start = shift_plan(result.plan)
        if reset_next.any():  # these envs now show a new episode's first obs: plan it from scratch
            warm_start[torch.as_tensor(reset_next, device=device)] = plan.initial_plan(int(reset_next.sum()))
        obs_np, rew, term, trunc, infos = envs.step(result.actions.detach().cpu().numpy())
        live = ~reset_next & counting
        fallbacks += int(result.fallback.cpu().numpy()[live].sum())
        steps += int(live.sum())
        ep_return += np.where(live, rew, 0.0)
        ep_violations += np.asarray(infos.get("violation", np.zeros(agents, bool)), bool) & live
        done = (term | trunc) & ~reset_next
        for i in np.flatnonzero(done & counting):  # statistics count completed episodes only
            returns.append(float(ep_return[i]))
            successes.append(bool(np.asarray(infos["is_success"])[i]) if "is_success" in infos else False)
            violations += int(ep_violations[i])
            violators += int(ep_violations[i] > 0)
        bar.update(int((done & counting).sum()))
        ep_return[done], ep_violations[done] = 0.0, 0
        for i in np.flatnonzero(done):  # the next episode counts while fewer than `episodes` have started
            counting[i] = started < episodes
            started += int(counting[i])
        if on_step is not None:
            on_step({"obs": obs, "params": params, "result": result, "done": done, "reset": reset_next})
        reset_next = done
    bar.close()
    envs.close()
    ms = np.asarray(plan_ms)
    return EvalResult(
        episodes=len(returns), mean_return=float(np.mean(returns)), success_rate=float(np.mean(successes)),
        violations=violations, episodes_with_violation=violators, fallbacks=fallbacks, steps=steps,
        plan_ms_mean=float(ms.mean()), plan_ms_p99=float(np.percentile(ms, 99)),
        plans_per_s=float(agents * len(ms) / (ms.sum() / 1000)), returns=returns)
