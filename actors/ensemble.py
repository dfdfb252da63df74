"""Ensemble workers: actors that hold one world-model version on their device and plan batches with it.

A worker loads a version (and its policy, when it has one) from the registry or a model directory onto its GPU
when the cluster has one (the actor then asks Ray for ``num_gpus=1``), else the
CPU, and hosts the Ray-free ``FleetPlanner`` (a ``WarehousePlanner`` for a warehouse fleet model). It answers three kinds of batched
calls: plan, score logged transitions (prediction error) and switch version.
Calls run on a small thread pool, so a switch loads the new version beside the
old one while plans keep being answered; each call plans with the version that
was current when it started, and the swap is one reference assignment. The
planner deployment of the fleet endpoint (``serving.planner_server``) holds one as well.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from actors.common import gpus_per_worker
from planners.service import FleetPlanner, PlanBatch, ServiceConfig, load_planner
from planners.warehouse_service import WarehousePlanner
from worldmodel.device import resolve_device
from worldmodel.registry import ModelRegistry
from worldmodel.reward_artifact import RewardArtifact


class EnsembleWorker:
    """Plans batches of agents with one model version; switches versions without dropping calls."""

    def __init__(self, model: str, registry_uri: str | None = None, cfg: ServiceConfig | None = None,
                 device: str = "auto") -> None:
        self.registry_uri, self.cfg, self.device = registry_uri, cfg or ServiceConfig(), device
        self.service = self._load(model)

    def _load(self, model: str) -> FleetPlanner | WarehousePlanner:
        """``model`` by registry reference ('production', '1.2.0', ...) with a registry, else by directory;
        planners built and warmed up."""
        model_dir = ModelRegistry(self.registry_uri).model_dir(model) if self.registry_uri else model
        service = load_planner(model_dir, self.cfg, device=resolve_device(self.device))
        service.warmup()
        return service

    def plan(self, obs: np.ndarray, warm_start: np.ndarray | None = None, objectives: list[str] | None = None,
             constraints: dict[str, np.ndarray] | None = None, budget_ms: float | None = None,
             hidden: np.ndarray | None = None, modes: list[str] | None = None,
             sites: list[str | None] | None = None, rewards: list[RewardArtifact | None] | None = None,
             hidden_versions: list[str | None] | None = None) -> PlanBatch:
        """See ``FleetPlanner.plan``; the answer names the version that planned it. ``hidden_versions``: per agent
        the version that left its hidden state (None: unknown, taken as this one's)."""
        service = self.service  # the version current when the call started answers it
        if hidden is not None and not (service.recurrent and hidden.shape[-1] == service.hidden_size):
            hidden = None  # states of another kind of model: every agent starts fresh
        if hidden is not None and hidden_versions is not None:
            # another version's state of the same size is no state of this one (after a switch, or production's
            # for a shadow or an A/B arm): those agents start fresh
            other = np.array([v is not None and v != service.version for v in hidden_versions])
            if other.any():
                hidden = np.where(other[:, None], np.float32(np.nan), hidden)
        named = {} if rewards is None else {"rewards": rewards}  # lone agents only: floors have no learned reward
        return service.plan(obs, warm_start, objectives, constraints, budget_ms, hidden, modes, sites, **named)

    def score(self, obs: np.ndarray, actions: np.ndarray, new_obs: np.ndarray) -> dict[str, Any]:
        """Prediction error of logged transitions (B rows): per row and its mean."""
        return self.service.score(obs, actions, new_obs)

    def switch(self, model: str) -> str:
        """Load ``model`` and make it current once it is ready; returns its version."""
        self.service = self._load(model)
        return self.service.version

    def version(self) -> str:
        return self.service.version

    def info(self) -> dict[str, Any]:
        return self.service.describe() | {"node_id": ray.get_runtime_context().get_node_id()}


def start_ensemble_worker(model: str, registry_uri: str | None = None, cfg: ServiceConfig | None = None,
                          name: str | None = None, **actor_options: Any) -> ray.actor.ActorHandle:
    """An ``EnsembleWorker`` actor on a GPU when the cluster has one, restarted by Ray if it dies."""
    options: dict[str, Any] = {"num_gpus": gpus_per_worker(), "num_cpus": 1, "max_concurrency": 4,
                               "max_restarts": -1, "max_task_retries": 2, **actor_options}
    if name is not None:
        options.update(name=name, get_if_exists=True)
    return ray.remote(EnsembleWorker).options(**options).remote(model, registry_uri, cfg)
