"""What every retrain shares: reading the logs with a recent holdout, and registering a candidate against production.

The learner (``learners/learner.py``) and the Tune sweep (``tune/sweep.py``) both read the logs
here, train on ``HeldOutLogs.train``, and register through ``register_candidate``, so a model
that comes out of a sweep is scored, compared and traced exactly like a nightly retrain's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray

from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.data import Transitions, data_fingerprint, read_env_id
from worldmodel.data import schema as sc
from worldmodel.data.reader import check_log_files, require_log_files, transitions_from_table
from worldmodel.data.writer import resolve_root
from worldmodel.envs import SpaceSpec, make_env, space_spec
from worldmodel.holdout import holdout_score, recent_holdout
from worldmodel.model import WorldModel
from worldmodel.registry import ModelRegistry
from worldmodel.registry_records import VersionInfo


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
    _, obs_dim, act_dim = check_log_files(files, filesystem)
    # The expected schema, not each file's own: a tree mixing schema versions 1 and 2 (timestamps stored
    # as Arrow timestamps, then as int64) reads as one, and unknown extra columns are dropped.
    schema = sc.trajectory_schema(obs_dim, act_dim)
    dataset = ray.data.read_parquet(files, filesystem=filesystem, schema=schema).select_columns(list(sc.COLUMNS))
    return transitions_from_table(pa.concat_tables(ray.get(dataset.to_arrow_refs())), data_uri)


@dataclass(frozen=True)
class HeldOutLogs:
    """A log tree read once and split into the episodes to train on and the most recent ones held out."""

    data_uri: str
    """Where the logs were read from."""
    fingerprint: str
    """``data_fingerprint`` of the log tree ("sha256:...")."""
    env_id: str
    """The env id recorded in the logs."""
    spec: SpaceSpec
    """That env's observation and action sizes."""
    holdout_fraction: float
    """Share of the most recent episodes held out, in (0, 1)."""
    train: Transitions
    """The older episodes: what a candidate trains on (rows of whole episodes)."""
    holdout: Transitions
    """The most recent episodes: what candidates and production are scored on."""

    @property
    def rows(self) -> int:
        """Transitions in the logs (train and holdout together)."""
        return len(self.train) + len(self.holdout)


def read_held_out(data_uri: str, holdout_fraction: float, *, files: list[str] | None = None,
                  fingerprint: str | None = None) -> HeldOutLogs:
    """Read the logs under ``data_uri`` through Ray Data and hold out the most recent episodes.

    Args:
        data_uri: the trajectory log tree.
        holdout_fraction: share of the most recent episodes to hold out, in (0, 1).
        files / fingerprint: the tree's files and fingerprint, when the caller has them already.

    Raises:
        FileNotFoundError: no log files under ``data_uri``.
        SchemaError: a file does not match the trajectory schema.
        ValueError: the logs record no env id, or hold fewer than 2 episodes.
    """
    files = files or require_log_files(data_uri)[2]  # listed once: a log tree can be large, or remote
    env_id = read_env_id(data_uri, files=files)
    if not env_id:
        raise ValueError(f"the logs under {data_uri} record no env id, so the model cannot be built")
    train, holdout = recent_holdout(read_logs(data_uri, files), holdout_fraction)
    return HeldOutLogs(data_uri=data_uri, fingerprint=fingerprint or data_fingerprint(data_uri, files=files),
                       env_id=env_id, spec=space_spec(make_env(env_id), env_id),
                       holdout_fraction=holdout_fraction, train=train, holdout=holdout)


def compare_with_production(model: WorldModel, registry: ModelRegistry, production: VersionInfo | None,
                            holdout: Transitions) -> dict[str, Any]:
    """Both models' scores on the same holdout, in the registry's ``holdout`` format (lower is better)."""
    candidate = holdout_score(model, holdout)
    if production is None:
        return {"candidate": candidate, "production": None, "production_version": None, "better": True}
    try:
        current = holdout_score(registry.load(production.version, model.device), holdout)
    except ValueError as err:
        raise ValueError(f"production {production.version} cannot be scored on this data: {err}") from err
    return {"candidate": candidate, "production": current, "production_version": production.version,
            "better": bool(candidate["score"] < current["score"])}


def run_id_for(fingerprint: str, model_cfg: ModelConfig, train_cfg: TrainConfig, holdout_fraction: float) -> str:
    """The id of a training run: the same data and settings give the same id (and checkpoint)."""
    key = json.dumps({"data": fingerprint, "model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
                      "holdout_fraction": holdout_fraction}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def registered_run(registry: ModelRegistry, run_id: str) -> VersionInfo | None:
    """The latest version registered by training run ``run_id`` (``lineage["run_id"]``), or None."""
    done = [v for v in registry.versions() if v.lineage.get("run_id") == run_id]
    return done[-1] if done else None


def register_candidate(registry: ModelRegistry, model: WorldModel, logs: HeldOutLogs,
                       **lineage: Any) -> VersionInfo:
    """Score ``model`` and production on ``logs.holdout`` and register ``model`` as a candidate.

    Its parent is the current production version; its lineage records the data (URI, fingerprint,
    rows, episodes trained on and held out) and the device it trained on, plus ``lineage``.

    Returns:
        The new version's record; ``holdout`` holds the comparison (``better``: beats production).
    """
    production = registry.production()
    comparison = compare_with_production(model, registry, production, logs.holdout)
    record = {"data_uri": logs.data_uri, "data_fingerprint": logs.fingerprint, "rows": logs.rows,
              "train_episodes": model.metrics["data"]["episodes"],
              "holdout_episodes": comparison["candidate"]["episodes"],
              "holdout_fraction": logs.holdout_fraction, "device": model.metrics.get("device"), **lineage}
    return registry.register(model, parent=production.version if production else None, holdout=comparison,
                             lineage=record)
