"""Drift to retraining on one local Ray: a serving feed fed sustained high MSE asks the real retrain scheduler,
which starts exactly one retrain whose registered version records the drift's cause."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from learners.drift import BUSY, NOT_PRODUCTION, RATE_LIMITED, SKIPPED, STARTED, DriftCause, request_drift_retrain
from learners.schedule import start_scheduler
from learners.settings import DriftSettings
from serving.engine_metrics import DriftFeed
from tests.learners.test_drift import _Clock
from tests.serving.test_engine import Metrics
from tests.ray_fixtures import ray_local  # noqa: F401
from worldmodel.data import write_transitions
from worldmodel.envs.collect import collect
from worldmodel.registry import ModelRegistry

TINY_MODEL = {"ensemble_size": 2, "hidden": 32, "layers": 2, "reward_hidden": 32, "reward_layers": 2}
TINY_TRAIN = {"epochs": 3, "patience": 3, "batch_size": 256}
SCHEDULER = "test-drift-scheduler"
YEARLY = "0 0 1 1 *"  # never fires during a test
SETTINGS = DriftSettings(window_s=10.0, sustain_s=30.0, min_rows=10, scheduler=SCHEDULER)


def _finished(scheduler: Any, runs: int, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """The scheduler's runs once ``runs`` of them have ended."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = ray.get(scheduler.status.remote())
        if len(status["runs"]) >= runs and all(r["end"] for r in status["runs"]) and not status["running"]:
            return status["runs"]
        time.sleep(0.2)
    raise TimeoutError(f"the scheduler had not finished {runs} runs in {timeout_s} s: {status}")


def _cause(version: str) -> DriftCause:
    return DriftCause(version=version, mse=2.0, threshold=0.5, rows=100, since=0.0, detected=30.0, window_s=10.0)


def test_sustained_drift_retrains_once_and_records_its_cause(ray_local, tmp_path: Path) -> None:  # noqa: F811
    data_uri, registry_uri = str(tmp_path / "logs"), str(tmp_path / "registry")
    write_transitions(data_uri, collect("Nav2D-v0", episodes=8, seed=0, agent_id="a"), "Nav2D-v0")
    assert asyncio.run(request_drift_retrain(_cause("1.0.0"), SCHEDULER)).outcome == SKIPPED  # none running yet
    scheduler = start_scheduler(YEARLY, data_uri, registry_uri, promote=True, name=SCHEDULER,
                                checkpoint_root=str(tmp_path / "checkpoints"), model_cfg=TINY_MODEL,
                                train_cfg=TINY_TRAIN)
    first = ray.get(scheduler.run_now.remote())
    assert first["error"] is None and first["result"]["version"] == "1.0.0" and first["result"]["promoted"]
    assert ray.get(scheduler.drift.remote(_cause("0.9.0"))).outcome == NOT_PRODUCTION
    # the fleet goes on logging: the drift retrain has new data to learn from
    write_transitions(data_uri, collect("Nav2D-v0", episodes=4, seed=1, agent_id="b"), "Nav2D-v0")

    metrics: Any = Metrics()
    clock = _Clock()
    clock.now = time.time()

    async def serve_drifting() -> DriftFeed:
        drift = DriftFeed(metrics, SETTINGS, clock=clock)  # the real request, to the real scheduler
        for _ in range(120):  # a batch every second of fake time, its error four times the threshold
            clock.now += 1.0
            drift.observe("1.0.0", {"1.0.0": (2.0, 5)})
            await asyncio.sleep(0.01)
        while drift._tasks:
            await asyncio.gather(*list(drift._tasks))
        return drift

    drift = asyncio.run(serve_drifting())
    assert drift.answers == {STARTED: 1}
    assert ray.get(scheduler.drift.remote(_cause("1.0.0"))).outcome in (RATE_LIMITED, BUSY)
    runs = _finished(scheduler, 2)
    assert [r["trigger"] for r in runs] == ["manual", "drift"] and runs[1]["error"] is None
    registry = ModelRegistry(registry_uri)
    drifted = registry.get(runs[1]["result"]["version"])
    assert drifted.version == "1.1.0" and drifted.parent == "1.0.0"
    trigger = drifted.lineage["trigger"]
    assert trigger["kind"] == "drift" and trigger["version"] == "1.0.0" and trigger["threshold"] == 0.5
    assert trigger["mse"] == pytest.approx(2.0) and trigger["rows"] == 50 and trigger == runs[1]["cause"]
    assert registry.get("1.0.0").lineage["trigger"] == {"kind": "manual"}
    assert ray.get(scheduler.drift.remote(_cause("1.0.0"))).outcome == RATE_LIMITED  # six hours from the first
    assert metrics.drift_retrains.calls == [(1, {"model_version": "1.0.0", "outcome": STARTED})]
    ray.kill(scheduler)
