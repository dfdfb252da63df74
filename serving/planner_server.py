"""The planner deployment of the fleet endpoint: an ``EnsembleWorker`` that follows a registry stage.

It hosts the Ray-free ``FleetPlanner`` (or ``WarehousePlanner``) on a GPU when the cluster has one. Serving a registry stage
('production', 'shadow'), it polls the registry and switches versions between two batches, without
dropping a request. ``serving.app.build`` deploys it as the planner and, optionally, as the shadow.

Reward models registered beside the world models (``worldmodel.reward_registry``) are named per request
(``reward_model``) or for the fleet (``ServiceConfig.reward_model``); the deployment loads each once and keeps
the last few (``RewardCache``), so a switch of world model version keeps them.

Shapes: ``N`` agents in a batch, ``S`` observation, ``A`` action, ``H`` horizon.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from actors.ensemble import EnsembleWorker
from planners.service import FleetPlanner, PlanBatch, ServiceConfig
from worldmodel.registry import STAGES, ModelRegistry
from worldmodel.reward_artifact import RewardArtifact
from worldmodel.reward_registry import RewardCache, RewardRegistry

logger = logging.getLogger("ray.serve")


class PlannerServer:
    """The planner deployment: an ``EnsembleWorker`` whose version moves with the registry stage it follows."""

    def __init__(self, model: str, registry_uri: str | None, service: dict[str, Any], poll_s: float) -> None:
        self.model, self.registry_uri, self.poll_s = model, registry_uri, poll_s
        cfg = ServiceConfig.from_dict(service)
        self.worker = EnsembleWorker(model, registry_uri, cfg)
        self.following = bool(registry_uri) and model in STAGES
        self.reward_registry = RewardRegistry(registry_uri) if registry_uri else None
        self.rewards = RewardCache(self.reward_registry)
        self.default_reward = cfg.reward_model
        """The fleet's reward model, for requests that name none (None: the world model's own reward)."""
        if self.default_reward is not None:  # refused at the start, not at the first request
            self._reward(self.default_reward)
        self._poller: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def plan(self, obs: np.ndarray, warm_start: np.ndarray | None, objectives: list[str],
                   constraints: dict[str, np.ndarray], budget_ms: float | None, hidden: np.ndarray | None = None,
                   modes: list[str] | None = None, sites: list[str | None] | None = None,
                   reward_models: list[str | None] | None = None,
                   hidden_versions: list[str | None] | None = None) -> PlanBatch:
        """See ``FleetPlanner.plan``: (N, S) observations, (N, H, A) warm starts, per agent its objective, its
        constraints (``planners.objectives`` keys: ``ZONES`` (N, Z, 3), ``BOX``, ``MAX_SPEED``, ``ACTION_LOW``,
        ``ACTION_HIGH``; ``serving.rows.constraints``), its mode ('plan' or 'policy'), its site (warehouse
        robots: those of one site are planned jointly), its reward model (a registered version; None: the
        fleet's) and the version that left its hidden state (``EnsembleWorker.plan``), for N agents."""
        self._follow()
        async with self._lock:  # one batch at a time: planning uses every core it is given
            return await asyncio.to_thread(self._plan, obs, warm_start, objectives, constraints, budget_ms,
                                           hidden, modes, sites, reward_models, hidden_versions)

    def _plan(self, obs: np.ndarray, warm_start: np.ndarray | None, objectives: list[str],
              constraints: dict[str, np.ndarray], budget_ms: float | None, hidden: np.ndarray | None,
              modes: list[str] | None, sites: list[str | None] | None,
              reward_models: list[str | None] | None, hidden_versions: list[str | None] | None) -> PlanBatch:
        """``plan`` on the worker's thread: the named reward models loaded (or taken from the cache) first."""
        names = [name or self.default_reward for name in (reward_models or [None] * len(obs))]
        rewards = [self._reward(n) if n else None for n in names] if any(names) else None
        return self.worker.plan(obs, warm_start, objectives, constraints, budget_ms, hidden, modes, sites, rewards,
                                hidden_versions)

    def _reward(self, version: str) -> RewardArtifact:
        """A registered reward model, loaded once; refused for a warehouse floor, whose planner has no learned
        reward (``RegistryError`` for an unknown name, ``RewardMismatch`` for another model's spaces)."""
        service = self.worker.service
        if not isinstance(service, FleetPlanner):
            raise ValueError(f"reward model {version}: model {service.version} does not plan with a learned reward "
                             "of vector states (Warehouse-v1 floors have fixed costs, camera models their own "
                             "latent reward); reward models plan lone vector agents' learned objective")
        reward = self.rewards.get(version)
        reward.check_fits(service.model.spec, f"model {service.version}")
        return reward

    async def explain(self, obs: np.ndarray, objective: str, constraints: dict[str, np.ndarray],
                      warm_start: np.ndarray | None, proposals: np.ndarray | None,
                      reward_model: str | None = None) -> dict[str, Any]:
        """See ``FleetPlanner.explain``: one agent's (S,) observation, objective, constraints (one row of
        ``plan``'s), (H, A) warm start, (M, A) or (M, H, A) proposals and reward model (None: the fleet's); the
        explanation's JSON body."""
        self._follow()
        async with self._lock:  # between batches: it plans with every core too
            service = self.worker.service
            name = reward_model or self.default_reward
            reward = self._reward(name) if name and objective == "learned" else None
            explanation = await asyncio.to_thread(service.explain, obs, objective, constraints, warm_start, proposals,
                                                  reward=reward)
        return explanation.to_dict() | {"model_version": service.version} | \
            ({"reward_model": name} if reward is not None else {})

    async def score(self, obs: np.ndarray, actions: np.ndarray, new_obs: np.ndarray) -> dict[str, Any]:
        return await asyncio.to_thread(self.worker.score, obs, actions, new_obs)

    async def info(self) -> dict[str, Any]:
        """``FleetPlanner.describe()``, the action box (``act_low``, ``act_high``), the stage it follows, the
        fleet's reward model (``reward_model``) and the registered ones a request may name (``reward_models``:
        those fitting the served model's spaces)."""
        self._follow()
        service = self.worker.service
        spec = service.model.spec
        registry = self.reward_registry if isinstance(service, FleetPlanner) else None
        fitting = [] if registry is None else await asyncio.to_thread(registry.fitting, spec)  # a read, maybe remote
        return service.describe() | {"act_low": [float(x) for x in spec.act_low],
                                     "act_high": [float(x) for x in spec.act_high],
                                     "follows": self.model if self.following else None,
                                     "reward_model": self.default_reward, "reward_models": fitting}

    def _follow(self) -> None:
        if self.following and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        registry = await asyncio.to_thread(ModelRegistry, self.registry_uri)  # type: ignore[arg-type]
        last_problem = None
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                problem = await self._follow_once(registry)
            except Exception as err:  # keep serving the current version; say why the switch failed
                problem = f"could not follow {self.model} in {self.registry_uri}: {err}"
            if problem is not None and problem != last_problem:  # said once, not every poll
                logger.warning(problem)
            last_problem = problem

    async def _follow_once(self, registry: ModelRegistry) -> str | None:
        """Switch to the stage's version if it moved; returns what is wrong, if anything."""
        holder = await asyncio.to_thread(registry.holder, self.model)  # a read, maybe remote: off the loop
        if holder is None:  # e.g. the shadow was just promoted: keep the version we have
            return f"stage {self.model!r} is empty in {self.registry_uri}; still serving {self.worker.version()}"
        if holder.version != self.worker.version():
            await asyncio.to_thread(self.worker.switch, holder.version)  # batches in flight keep the old one
            logger.info("now serving %s %s", self.model, holder.version)
        return None
