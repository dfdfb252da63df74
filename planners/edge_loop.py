"""The edge planner closed loop on Nav2D: N envs in lockstep, one ``EdgeCEM`` call per step for all of them.

numpy, gymnasium and onnxruntime only. Counted like ``planners.evaluate.closed_loop``: the first
``episodes`` episodes to start, each run to its end (counting the first to end would miss failures,
which end last, at the time limit).

Shapes: ``N`` agents (envs), ``S`` state, ``Z`` zones.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium
import numpy as np

from planners.edge import EdgeCEM, shift_plan
from worldmodel.envs import NAV2D_ID, make_env
from worldmodel.envs.nav2d import GOAL_DIMS


@dataclass(frozen=True)
class EdgeLoopResult:
    """Statistics of the counted (completed) episodes."""

    episodes: int
    success_rate: float
    zone_steps: int
    """Steps spent strictly inside a no-fly zone."""
    episodes_with_violation: int
    steps: int
    plan_ms_mean: float
    plan_ms_p99: float


def edge_closed_loop(planner: EdgeCEM, episodes: int, agents: int = 16, zones: int = 2,
                     seed: int = 0) -> EdgeLoopResult:
    """Run ``agents`` Nav2D envs with ``zones`` no-fly zones each until ``episodes`` episodes have ended."""
    if episodes < 1 or agents < 1:
        raise ValueError(f"episodes and agents must be >= 1, got {episodes} and {agents}")
    kwargs = {"num_no_fly_zones": zones} if zones else {}
    envs = gymnasium.vector.SyncVectorEnv([lambda: make_env(NAV2D_ID, **kwargs) for _ in range(agents)])
    obs, infos = envs.reset(seed=seed)
    counting = np.arange(agents) < episodes  # (N,) whether each env's current episode is counted
    started, successes, violators, zone_steps, steps = int(counting.sum()), [], 0, 0, 0
    ep_violations = np.zeros(agents, int)
    reset = np.zeros(agents, bool)  # gymnasium's next-step autoreset: this step only resets these envs
    warm, plan_ms = None, []
    while len(successes) < episodes:
        result = planner.plan(obs, obs[:, GOAL_DIMS], np.asarray(infos["no_fly_zones"], np.float32) if zones else None,
                              warm)
        plan_ms.append(result.elapsed_ms)
        warm = shift_plan(result.plan)
        warm[reset] = planner.initial_plan(int(reset.sum()))  # a new episode starts from scratch
        obs, _, term, trunc, infos = envs.step(result.actions)
        live = ~reset & counting
        ended = (term | trunc) & ~reset
        steps += int(live.sum())
        ep_violations += np.asarray(infos["violation"], bool) & live
        for i in np.flatnonzero(ended & counting):
            successes.append(bool(infos["is_success"][i]))
            zone_steps += int(ep_violations[i])
            violators += int(ep_violations[i] > 0)
        ep_violations[ended] = 0
        for i in np.flatnonzero(ended):  # the next episode counts while fewer than `episodes` have started
            counting[i] = started < episodes
            started += int(counting[i])
        reset = ended
    envs.close()
    ms = np.asarray(plan_ms)
    return EdgeLoopResult(len(successes), float(np.mean(successes)), zone_steps, violators, steps,
                          float(ms.mean()), float(np.percentile(ms, 99)))
