"""Simulated fleet: actors that step many gymnasium envs and append their trajectories to the logs.

Each simulator is one agent id's worth of env copies; a fleet is several
simulators in parallel, each writing its own files (atomically, whole episodes
only), so they never contend for a file. The behaviour policy is random
exploration, or an ensemble worker planning for every copy in one call per step.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray

from worldmodel.data import TrajectoryWriter
from worldmodel.envs.collect import collect


class FleetSimulator:
    """Runs env copies under one agent id and logs their transitions."""

    def __init__(self, env_id: str, log_uri: str, agent_id: str, seed: int = 0, num_envs: int = 8,
                 env_kwargs: dict[str, Any] | None = None) -> None:
        self.env_id, self.agent_id, self.seed = env_id, agent_id, seed
        self.num_envs, self.env_kwargs = num_envs, env_kwargs or {}
        self.writer = TrajectoryWriter(log_uri, env_id=env_id)
        self.rounds = 0

    def run(self, episodes: int, worker: ray.actor.ActorHandle | None = None) -> dict[str, Any]:
        """Collect ``episodes`` whole episodes (random actions, or planned by ``worker``) and log them."""
        start = time.perf_counter()
        policy: Any = "random"
        if worker is not None:
            def policy(obs: np.ndarray) -> np.ndarray:
                return ray.get(worker.plan.remote(obs)).actions
        # Each round gets its own seed, so repeated runs add new episodes rather than copies.
        data = collect(self.env_id, episodes, seed=self.seed * 1000 + self.rounds, policy=policy,
                       agent_id=self.agent_id, env_kwargs=self.env_kwargs, num_envs=self.num_envs)
        self.rounds += 1
        files = self.writer.write(data)
        returns = _episode_returns(data.rewards, data.eps_id)
        return {"agent_id": self.agent_id, "episodes": episodes, "transitions": len(data), "files": len(files),
                "mean_return": float(np.mean(returns)), "seconds": time.perf_counter() - start}


def _episode_returns(rewards: np.ndarray, eps_id: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(eps_id.astype(str), return_inverse=True)
    return np.bincount(inverse, weights=rewards)


def simulate_fleet(env_id: str, log_uri: str, simulators: int, episodes: int, seed: int = 0,
                   worker: ray.actor.ActorHandle | None = None, env_kwargs: dict[str, Any] | None = None,
                   num_envs: int = 8) -> dict[str, Any]:
    """Run ``simulators`` actors in parallel, each collecting ``episodes`` episodes into ``log_uri``.

    Returns:
        Totals (transitions, episodes, files, mean return) and each simulator's report.
    """
    if simulators < 1 or episodes < 1:
        raise ValueError(f"simulators and episodes must be >= 1, got {simulators} and {episodes}")
    remote = ray.remote(FleetSimulator).options(num_cpus=1)
    actors = [remote.remote(env_id, log_uri, f"sim-{seed:03d}-{i:03d}", seed * 1000 + i, num_envs, env_kwargs)
              for i in range(simulators)]
    reports = ray.get([a.run.remote(episodes, worker) for a in actors])
    for a in actors:
        ray.kill(a)
    return {"simulators": simulators, "episodes": simulators * episodes,
            "transitions": sum(r["transitions"] for r in reports), "files": sum(r["files"] for r in reports),
            "mean_return": float(np.mean([r["mean_return"] for r in reports])), "reports": reports}
