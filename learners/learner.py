"""The learner: retrains the world model from the fleet's logs and registers it against production.

One ``retrain`` call reads the Arrow logs through Ray Data, holds out the most recent
episodes, trains a candidate on the rest (on the actor's GPU when it has one),
scores candidate and production on the same holdout, and registers the candidate
with its lineage; with ``promote`` it goes to production only when it scores better.

Training checkpoints every epoch under ``<checkpoint_root>/<run_id>``. The run id is
a hash of the data fingerprint and the settings, so when the learner's process dies
Ray restarts the actor, retries the call, and the retry resumes the same checkpoint.
A run whose version is already registered returns that version instead of a second one.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import ray
from ray.actor import ActorHandle

from actors.common import NAMESPACE, gpus_per_worker
from learners.drift import TRIGGER_MANUAL, check_trigger
from learners.retrain import read_held_out, register_candidate, registered_run, run_id_for
from learners.settings import DEFAULT_TRAIN_POLICY
from worldmodel.config import ModelConfig, TrainConfig, config_from_dict, default_dynamics
from worldmodel.data import data_fingerprint, read_env_id
from worldmodel.data.reader import require_log_files
from worldmodel.registry import ModelRegistry
from worldmodel.registry_records import VersionInfo
from worldmodel.training import FITS, train_world_model


def _log(message: str) -> None:
    # Ray sends a worker's stderr to its log file, and to the driver when it streams logs.
    print(f"learner: {message}", file=sys.stderr, flush=True)


def model_config_for(model_cfg: dict[str, Any] | None, env_id: str | None) -> ModelConfig:
    """``model_cfg``'s fields over ``ModelConfig``'s defaults; with no ``dynamics`` (or None), the kind
    ``env_id``'s logs train by default (``default_dynamics``: the fleet model for a fleet env's logs)."""
    fields = dict(model_cfg or {})
    if fields.get("dynamics") is None:
        fields["dynamics"] = default_dynamics(env_id)
    return config_from_dict(ModelConfig, fields)


class Learner:
    """Retrains world models from logs into a registry (hosted as a Ray actor by ``start_learner``)."""

    def __init__(self, checkpoint_root: str) -> None:
        """
        Args:
            checkpoint_root: a local directory for training checkpoints; on a multi-node cluster a
                shared mount, so an actor restarted on another node finds them.
        """
        self.checkpoint_root = Path(checkpoint_root).expanduser()
        ray.data.DataContext.get_current().enable_progress_bars = False

    def pid(self) -> int:
        """The actor's process id (tests kill it to exercise restarts)."""
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this learner runs on."""
        return ray.get_runtime_context().get_node_id()

    def retrain(self, data_uri: str, registry_uri: str, *, model_cfg: dict[str, Any] | None = None,
                train_cfg: dict[str, Any] | None = None, holdout_fraction: float = 0.2, promote: bool = False,
                run_id: str | None = None, train_policy: bool = DEFAULT_TRAIN_POLICY,
                policy_cfg: dict[str, Any] | None = None, trigger: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train a candidate on the logs, compare it with production, register it (and maybe promote it).

        Args:
            data_uri: the trajectory log tree.
            registry_uri: the model registry.
            model_cfg / train_cfg: ``ModelConfig`` / ``TrainConfig`` fields (defaults for the rest; no
                ``dynamics``: the logs' env's default kind, ``model_config_for``).
            holdout_fraction: share of the most recent episodes held out for the comparison.
            promote: move the candidate to production when its holdout score beats production's.
            run_id: the checkpoint's name (default: a hash of the data fingerprint and settings).
            train_policy: then train a policy in the registered version (``learners.policy_training``), unless
                it has one already (a retried call); needs a local registry (the policy goes into the artifact).
            policy_cfg: ``PolicySettings`` fields (default: the preset for the model's env).
            trigger: what asked for this retrain, recorded as the registered version's ``lineage["trigger"]``:
                ``{"kind": "drift", ...cause}`` (``learners.drift``), ``{"kind": "schedule"}``; default
                ``{"kind": "manual"}``. A run registered before keeps the trigger it was registered with.

        Returns:
            JSON-friendly: version, stage, holdout, promoted, resumed (and resumed_from per stage),
            run_id, existing (the run had been registered before), policy (None without ``train_policy``:
            its version, path, evaluations and seconds), trigger (the registered version's), seconds.
        """
        trigger = check_trigger(trigger or {"kind": TRIGGER_MANUAL})
        start = time.perf_counter()
        _, _, files = require_log_files(data_uri)  # listed once: a log tree can be large, or remote
        mcfg = model_config_for(model_cfg, read_env_id(data_uri, files=files))
        tcfg = config_from_dict(TrainConfig, train_cfg or {})
        fingerprint = data_fingerprint(data_uri, files=files)
        run_id = run_id or run_id_for(fingerprint, mcfg, tcfg, holdout_fraction)
        registry = ModelRegistry(registry_uri)
        if train_policy and registry.remote:
            raise ValueError(f"train_policy needs a local registry (the policy is written into the artifact), "
                             f"not {registry_uri}")
        done = registered_run(registry, run_id)
        if done is not None:
            _log(f"run {run_id} is already registered as {done.version}")
            policy = self._policy(registry, done.version, data_uri, policy_cfg) if train_policy else None
            return self._result(registry, done, promote, existing=True, start=start, policy=policy)

        logs = read_held_out(data_uri, holdout_fraction, files=files, fingerprint=fingerprint)
        _log(f"read {logs.rows} transitions from {data_uri}; holding out {len(logs.holdout)} rows of the newest "
             "episodes")
        checkpoint_dir = self.checkpoint_root / run_id
        model = train_world_model(logs.train, logs.spec, mcfg, tcfg, log=_log, checkpoint_dir=checkpoint_dir)
        model.data_fingerprint = fingerprint
        resumed_from = {s: (model.metrics.get(s) or {}).get("fit", {}).get("resumed_from") for s in FITS}
        info = register_candidate(registry, model, logs, run_id=run_id, resumed_from=resumed_from, trigger=trigger)
        assert info.holdout is not None  # register_candidate always compares
        _log(f"registered {info.version}: holdout score {info.holdout['candidate']['score']:.4f}, "
             f"better than production: {info.holdout['better']}")
        shutil.rmtree(checkpoint_dir)
        policy = self._policy(registry, info.version, data_uri, policy_cfg) if train_policy else None
        return self._result(registry, info, promote, existing=False, start=start, policy=policy)

    @staticmethod
    def _policy(registry: ModelRegistry, version: str, data_uri: str,
                policy_cfg: dict[str, Any] | None) -> dict[str, Any]:
        """Train a policy in ``version`` (PPO in its imagined rollouts from ``data_uri``), or report the one
        it has (a retried call after the policy was saved)."""
        # Imported here: RLlib takes seconds to import, which a learner that trains no policy never pays.
        from learners.policy_training import policy_preset, train_policy
        from planners.policy_artifact import policy_info
        from worldmodel.artifact import load_model

        model_dir = registry.model_dir(version)
        existing = policy_info(model_dir)
        if existing is not None:
            _log(f"{version} has policy {existing['version']} already")
            return {"version": existing["version"], "path": str(model_dir / "policy"), "existing": True,
                    **{k: existing["summary"].get(k) for k in ("imagined", "real", "train_seconds")}}
        settings = policy_preset(load_model(model_dir), **(policy_cfg or {}))  # a fleet model's floors, or its env's
        _log(f"training a policy in {version} ({settings.iterations} PPO iterations)")
        result = train_policy(model_dir, data_uri, settings,
                              progress=lambda s: _log(f"policy iteration {s.iteration}: return {s.mean_return}, "
                                                      f"success {s.success}"))
        _log(f"policy {result.version}: real-env success {result.real.success_rate}, return {result.real.mean_return}")
        return {"version": result.version, "path": result.path, "existing": False, "imagined": vars(result.imagined),
                "real": vars(result.real), "train_seconds": result.train_seconds}

    @staticmethod
    def _result(registry: ModelRegistry, info: VersionInfo, promote: bool, *, existing: bool,
                start: float, policy: dict[str, Any] | None = None) -> dict[str, Any]:
        better = bool((info.holdout or {}).get("better"))
        promoted = False
        if promote and better and info.stage != "production":
            info = registry.promote(info.version)
            promoted = True
            _log(f"promoted {info.version} to production")
        elif promote and not better:
            _log(f"not promoting {info.version}: its holdout score is not better than production's")
        resumed_from = info.lineage.get("resumed_from") or {}
        return {"version": info.version, "stage": info.stage, "holdout": info.holdout, "promoted": promoted,
                "resumed": any(v for v in resumed_from.values()), "resumed_from": resumed_from,
                "run_id": info.lineage.get("run_id"), "existing": existing, "policy": policy,
                "trigger": info.lineage.get("trigger"),
                "seconds": round(time.perf_counter() - start, 3)}


def start_learner(name: str | None = None, *, checkpoint_root: str, max_restarts: int = 3,
                  **actor_options: Any) -> ActorHandle:
    """Start a Learner actor (or, with ``name``, reuse the one of that name in fleetwm's namespace).

    Its process may die mid-``retrain`` (node loss, OOM): Ray restarts it up to ``max_restarts``
    times and retries the call, which resumes from the last epoch's checkpoint.

    Args:
        name: a name to find the learner by, or None for an anonymous one owned by the caller.
        checkpoint_root: where training checkpoints go (see ``Learner.__init__``).
        max_restarts: restarts of the actor, and retries of an interrupted call.
        actor_options: more Ray actor options (e.g. ``resources`` to pick a node type).
    """
    if max_restarts < 0:
        raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
    options: dict[str, Any] = {"num_cpus": 1, "num_gpus": gpus_per_worker(), "max_restarts": max_restarts,
                               "max_task_retries": max_restarts, "namespace": NAMESPACE, **actor_options}
    if name is not None:
        options |= {"name": name, "get_if_exists": True}
    return ray.remote(Learner).options(**options).remote(checkpoint_root)


def retrain_once(data_uri: str, registry_uri: str, *, checkpoint_root: str, **retrain: Any) -> dict[str, Any]:
    """One retrain on a learner actor of its own, stopped afterwards (also when the retrain fails).

    ``retrain`` takes ``Learner.retrain``'s keyword arguments (``promote``, ``model_cfg``, ...).
    """
    learner = start_learner(checkpoint_root=checkpoint_root)
    try:
        return ray.get(learner.retrain.remote(data_uri, registry_uri, **retrain))
    finally:
        ray.kill(learner)
