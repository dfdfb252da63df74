"""The learner and its scheduler on one local Ray: retrain from logs, compare with production, survive a
killed process, run on a schedule."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from ray.actor import ActorHandle

from actors.common import NAMESPACE
from learners.cron import CronError, next_fire
from learners.learner import start_learner
from learners.retrain import read_logs
from learners.schedule import start_scheduler
from tests.ray_fixtures import ray_local  # noqa: F401
from worldmodel.data import Transitions, read_transitions, write_transitions
from worldmodel.data import schema as sc
from worldmodel.envs.collect import collect
from worldmodel.holdout import recent_holdout
from worldmodel.registry import ModelRegistry, RegistryError

TINY_MODEL = {"ensemble_size": 2, "hidden": 32, "layers": 2, "reward_hidden": 32, "reward_layers": 2}
TINY_TRAIN = {"epochs": 6, "patience": 6, "batch_size": 256}
HOLDOUT = 0.2


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Good logs, and the same logs with every row but the holdout's ``new_obs`` shuffled (a sensor fault)."""
    root = tmp_path_factory.mktemp("logs")
    data = collect("Nav2D-v0", episodes=12, seed=0)
    write_transitions(str(root / "good"), data, "Nav2D-v0")
    _, holdout = recent_holdout(data, HOLDOUT)
    old = ~np.isin(data.eps_id, np.unique(holdout.eps_id))
    new_obs = data.new_obs.copy()
    new_obs[old] = new_obs[old][np.random.default_rng(0).permutation(old.sum())]
    fields = {name: getattr(data, name) for name in data.__dataclass_fields__}
    write_transitions(str(root / "corrupt"), Transitions(**(fields | {"new_obs": new_obs})), "Nav2D-v0")
    return {"good": str(root / "good"), "corrupt": f"file://{root / 'corrupt'}"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="module")
def learner(ray_local, checkpoints: Path) -> Iterator[ActorHandle]:  # noqa: F811
    """One named learner for the module (each actor start costs seconds on a small machine)."""
    handle = start_learner("test-learner", checkpoint_root=str(checkpoints), max_restarts=2)
    yield handle
    ray.kill(handle)


def test_ray_data_reads_what_the_plain_reader_reads(learner, logs) -> None:
    # Inside the learner's process, where retrain reads (and where Ray Data's start-up is paid once).
    a = ray.get(learner.__ray_call__.remote(lambda _, uri: read_logs(uri), logs["good"]))
    b = read_transitions(logs["good"])
    for name in ("obs", "actions", "new_obs", "rewards", "eps_id", "t", "timestamp"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_retrain_registers_compares_and_refuses_a_worse_candidate(learner, checkpoints, logs, tmp_path) -> None:
    registry_uri = str(tmp_path / "registry")
    settings = {"model_cfg": TINY_MODEL, "train_cfg": TINY_TRAIN, "holdout_fraction": HOLDOUT}

    first = ray.get(learner.retrain.remote(logs["good"], registry_uri, promote=True, **settings))
    assert first["version"] == "1.0.0" and first["promoted"] and first["stage"] == "production"
    assert first["holdout"]["better"] and first["holdout"]["production"] is None
    assert not first["resumed"] and not first["existing"]
    registry = ModelRegistry(registry_uri)
    info = registry.get("1.0.0")
    assert info.lineage["data_uri"] == logs["good"] and info.lineage["run_id"] == first["run_id"]
    assert info.lineage["train_episodes"] + info.lineage["holdout_episodes"] == 12
    assert info.lineage["holdout_episodes"] == 2 and info.lineage["rows"] > 0
    assert info.data_fingerprint.startswith("sha256:")
    assert not any(checkpoints.iterdir())  # the run's checkpoint is gone once registered

    again = ray.get(learner.retrain.remote(logs["good"], registry_uri, **settings))  # same data and settings
    assert again["existing"] and again["version"] == "1.0.0" and len(registry.versions()) == 1

    worse = ray.get(learner.retrain.remote(logs["corrupt"], registry_uri, promote=True, **settings))
    holdout = worse["holdout"]
    assert worse["version"] == "1.1.0" and not worse["promoted"] and worse["stage"] == "candidate"
    assert holdout["production_version"] == "1.0.0" and holdout["better"] is False
    assert holdout["candidate"]["score"] > 2 * holdout["production"]["score"]
    assert registry.get("1.1.0").parent == "1.0.0"
    with pytest.raises(RegistryError, match="refusing to promote 1.1.0"):
        registry.promote("1.1.0")
    assert registry.production().version == "1.0.0"


def _kill_when(path: Path, pid: int, timeout: float = 120.0) -> threading.Thread:
    """Kill ``pid`` as soon as ``path`` exists: the learner is then mid-training, with a checkpoint."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_killed_learner_is_restarted_and_resumes_from_its_checkpoint(learner, checkpoints, logs,
                                                                       tmp_path) -> None:
    registry_uri = str(tmp_path / "registry")
    assert start_learner("test-learner", checkpoint_root="unused") == learner  # found by name
    pid = ray.get(learner.pid.remote())
    killer = _kill_when(checkpoints / "killed" / "dynamics.pt", pid)
    result = ray.get(learner.retrain.remote(logs["good"], registry_uri, model_cfg=TINY_MODEL,
                                            train_cfg=TINY_TRAIN | {"epochs": 30, "patience": 30},
                                            run_id="killed"), timeout=180)
    killer.join()
    assert ray.get(learner.pid.remote()) != pid  # a new process finished the call
    assert result["resumed"] and result["resumed_from"]["dynamics"] > 0
    versions = ModelRegistry(registry_uri).versions()
    assert [v.version for v in versions] == ["1.0.0"]
    assert versions[0].lineage["resumed_from"]["dynamics"] > 0


SCHEDULER = "test-retrain-scheduler"
YEARLY = "0 0 1 1 *"  # never fires during a test


def test_scheduler_reports_next_fire_records_a_failure_and_runs_now(ray_local, logs, tmp_path) -> None:  # noqa: F811
    data_uri, registry_uri = str(tmp_path / "logs"), str(tmp_path / "registry")
    before = datetime.datetime.now(datetime.timezone.utc)
    scheduler = start_scheduler(YEARLY, data_uri, registry_uri, promote=True, name=SCHEDULER,
                                checkpoint_root=str(tmp_path / "checkpoints"), model_cfg=TINY_MODEL,
                                train_cfg=TINY_TRAIN | {"epochs": 3})
    status = ray.get(scheduler.status.remote())
    assert datetime.datetime.fromisoformat(status["next_fire"]) == next_fire(YEARLY, before)
    assert status["runs"] == [] and not status["running"] and status["loop_error"] is None

    failed = ray.get(scheduler.run_now.remote())  # no logs yet: recorded, not raised
    assert failed["result"] is None and "no trajectory logs" in failed["error"] and failed["end"] is not None
    shutil.copytree(logs["good"], data_uri)
    run = ray.get(scheduler.run_now.remote())
    assert run["error"] is None and run["trigger"] == "manual"
    assert run["result"]["version"] == "1.0.0" and run["result"]["promoted"]
    assert ModelRegistry(registry_uri).production().version == "1.0.0"
    assert ray.get(scheduler.status.remote())["runs"] == [failed, run]

    # Starting it again replaces it: the same name, the new schedule, no past runs.
    scheduler = start_scheduler("*/5 * * * *", data_uri, registry_uri, name=SCHEDULER)
    status = ray.get(ray.get_actor(SCHEDULER, namespace=NAMESPACE).status.remote())
    assert status["cron"] == "*/5 * * * *" and status["runs"] == []
    ray.kill(scheduler)


def test_a_bad_cron_is_refused_before_anything_starts(ray_local) -> None:  # noqa: F811
    with pytest.raises(CronError, match="hour '25'"):
        start_scheduler("0 25 * * *", "logs", "registry", name="never-started")
    with pytest.raises(ValueError):
        ray.get_actor("never-started", namespace=NAMESPACE)


def test_ray_data_reads_a_tree_mixing_schema_versions(learner, tmp_path) -> None:
    # Version 1 stored timestamps as Arrow timestamps, version 2 as int64 microseconds: Ray Data must
    # read both in one dataset, as the plain reader does.
    old = collect("Nav2D-v0", episodes=2, seed=5, agent_id="old-agent")
    table = old.to_table()
    legacy = pa.array(old.timestamp, sc.LEGACY_TIMESTAMP_TYPE)
    table = table.set_column(table.schema.get_field_index(sc.TIMESTAMP), sc.TIMESTAMP, legacy)
    table = table.replace_schema_metadata({**table.schema.metadata, sc.META_SCHEMA_VERSION: b"1"})
    (tmp_path / "2026-11-24" / "old-agent").mkdir(parents=True)
    pq.write_table(table, tmp_path / "2026-11-24" / "old-agent" / "part-0.parquet")
    new = collect("Nav2D-v0", episodes=2, seed=6, agent_id="new-agent")
    write_transitions(str(tmp_path), new)
    a = ray.get(learner.__ray_call__.remote(lambda _, uri: read_logs(uri), str(tmp_path)))
    b = read_transitions(str(tmp_path))
    assert len(a) == len(b) == len(old) + len(new)
    for name in ("obs", "actions", "eps_id", "t", "timestamp"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
