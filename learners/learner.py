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

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
from ray.actor import ActorHandle

from actors.common import NAMESPACE, gpus_per_worker
from worldmodel.config import ModelConfig, TrainConfig, config_from_dict
from worldmodel.data import Transitions, data_fingerprint, read_env_id
from worldmodel.data import schema as sc
from worldmodel.data.reader import check_log_files, require_log_files, transitions_from_table
from worldmodel.data.writer import resolve_root
from worldmodel.envs import make_env, space_spec
from worldmodel.holdout import holdout_score, recent_holdout
from worldmodel.model import WorldModel
from worldmodel.registry import ModelRegistry, VersionInfo
from worldmodel.training import FITS, train_world_model


def read_logs(data_uri: str, files: list[str] | None = None) -> Transitions:
    """Read every log file under ``data_uri`` (a path, ``file://``, ``s3://``, ``gs://``) with Ray Data.

    Every file's schema is checked first, as ``read_transitions`` does, so a bad file is named.
    ``files``: ``data_uri``'s files as ``require_log_files`` returns them, when the caller has listed them already.

    Returns:
        B transitions sorted by (agent_id, eps_id, t, timestamp), as ``read_transitions`` returns them.

    Raises:
        FileNotFoundError: no log files under ``data_uri``.
        SchemaError: a file does not match the trajectory schema, or a column has nulls.
    """
    filesystem, _ = resolve_root(data_uri)
    files = files or require_log_files(data_uri)[2]
    check_log_files(files, filesystem)
    dataset = ray.data.read_parquet(files, filesystem=filesystem).select_columns(list(sc.COLUMNS))
    return transitions_from_table(pa.concat_tables(ray.get(dataset.to_arrow_refs())), data_uri)


def run_id_for(fingerprint: str, model_cfg: ModelConfig, train_cfg: TrainConfig, holdout_fraction: float) -> str:
    """The id of a training run: the same data and settings give the same id (and checkpoint)."""
    key = json.dumps({"data": fingerprint, "model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
                      "holdout_fraction": holdout_fraction}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _log(message: str) -> None:
    # Ray sends a worker's stderr to its log file, and to the driver when it streams logs.
    print(f"learner: {message}", file=sys.stderr, flush=True)


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
                run_id: str | None = None) -> dict[str, Any]:
        """Train a candidate on the logs, compare it with production, register it (and maybe promote it).

        Args:
            data_uri: the trajectory log tree.
            registry_uri: the model registry.
            model_cfg / train_cfg: ``ModelConfig`` / ``TrainConfig`` fields (defaults for the rest).
            holdout_fraction: share of the most recent episodes held out for the comparison.
            promote: move the candidate to production when its holdout score beats production's.
            run_id: the checkpoint's name (default: a hash of the data fingerprint and settings).

        Returns:
            JSON-friendly: version, stage, holdout, promoted, resumed (and resumed_from per stage),
            run_id, existing (the run had been registered before), seconds.
        """
        start = time.perf_counter()
        mcfg = config_from_dict(ModelConfig, model_cfg or {})
        tcfg = config_from_dict(TrainConfig, train_cfg or {})
        _, _, files = require_log_files(data_uri)  # listed once: a log tree can be large, or remote
        fingerprint = data_fingerprint(data_uri, files=files)
        run_id = run_id or run_id_for(fingerprint, mcfg, tcfg, holdout_fraction)
        registry = ModelRegistry(registry_uri)
        done = [v for v in registry.versions() if v.lineage.get("run_id") == run_id]
        if done:
            _log(f"run {run_id} is already registered as {done[-1].version}")
            return self._result(registry, done[-1], promote, existing=True, start=start)

        env_id = read_env_id(data_uri, files=files)
        if not env_id:
            raise ValueError(f"the logs under {data_uri} record no env id, so the learner cannot build the model")
        data = read_logs(data_uri, files)
        train, holdout = recent_holdout(data, holdout_fraction)
        _log(f"read {len(data)} transitions from {data_uri}; holding out {len(holdout)} rows of the newest episodes")
        checkpoint_dir = self.checkpoint_root / run_id
        model = train_world_model(train, space_spec(make_env(env_id), env_id), mcfg, tcfg, log=_log,
                                  checkpoint_dir=checkpoint_dir)
        model.data_fingerprint = fingerprint
        production = registry.production()
        comparison = self._compare(model, registry, production, holdout)
        resumed_from = {s: (model.metrics.get(s) or {}).get("fit", {}).get("resumed_from") for s in FITS}
        lineage = {"data_uri": data_uri, "data_fingerprint": fingerprint, "rows": len(data),
                   "train_episodes": model.metrics["data"]["episodes"],
                   "holdout_episodes": comparison["candidate"]["episodes"],
                   "holdout_fraction": holdout_fraction, "run_id": run_id, "resumed_from": resumed_from,
                   "device": model.metrics.get("device")}
        info = registry.register(model, parent=production.version if production else None, holdout=comparison,
                                 lineage=lineage)
        _log(f"registered {info.version}: holdout score {comparison['candidate']['score']:.4f}, "
             f"better than production: {comparison['better']}")
        shutil.rmtree(checkpoint_dir)
        return self._result(registry, info, promote, existing=False, start=start)

    @staticmethod
    def _compare(model: WorldModel, registry: ModelRegistry, production: VersionInfo | None,
                 holdout: Transitions) -> dict[str, Any]:
        """Both models' scores on the same holdout, in the registry's ``holdout`` format."""
        candidate = holdout_score(model, holdout)
        if production is None:
            return {"candidate": candidate, "production": None, "production_version": None, "better": True}
        try:
            current = holdout_score(registry.load(production.version, model.device), holdout)
        except ValueError as err:
            raise ValueError(f"production {production.version} cannot be scored on this data: {err}") from err
        return {"candidate": candidate, "production": current, "production_version": production.version,
                "better": bool(candidate["score"] < current["score"])}

    @staticmethod
    def _result(registry: ModelRegistry, info: VersionInfo, promote: bool, *, existing: bool,
                start: float) -> dict[str, Any]:
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
                "run_id": info.lineage.get("run_id"), "existing": existing,
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
