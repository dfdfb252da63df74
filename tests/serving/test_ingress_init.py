"""What an ingress replica builds and answers, without Ray: its record cache, its start-up checks, and
how it answers while the planner's spec or the telemetry logger cannot be reached."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import ray
from fastapi import HTTPException

from actors.telemetry import LoggerStats
from serving.app import FleetIngress
from serving.config import AppConfig
from serving.front import Refreshed
from serving.metrics import ServingMetrics
from serving.schema import BatchRequest, PlanRequest

INGRESS = FleetIngress.__bases__[0]  # the class as written, under Serve's ASGI wrapper
SPEC = {"model_version": "1.0.0", "env_id": "Nav2D-v0", "obs_dim": 6, "act_dim": 2, "objectives": ["learned"],
        "zones": True}


class FakeMetrics:
    """Records what the ingress exports about telemetry."""

    def __init__(self) -> None:
        self.telemetry: list[LoggerStats | None] = []

    def report_telemetry(self, stats: LoggerStats | None) -> None:
        self.telemetry.append(stats)


def _remote(fn: Any) -> SimpleNamespace:
    """An actor method as the ingress calls it (``handle.method.remote(...)`` awaited)."""
    return SimpleNamespace(remote=fn)


def _ingress(monkeypatch: pytest.MonkeyPatch, logger: Any = None, **settings: Any) -> Any:
    # The class's methods see the module's names as Serve froze them (a copy of its globals): patch those.
    names = INGRESS._setup.__globals__
    monkeypatch.setitem(names, "start_state_shards", lambda cfg, detached: object())
    monkeypatch.setitem(names, "start_telemetry", lambda cfg: (None, logger))
    monkeypatch.setitem(names, "serving_metrics", FakeMetrics)
    assert INGRESS.__name__ == "FleetIngress"
    ingress = INGRESS.__new__(INGRESS)
    cfg = AppConfig(model="production", **settings)
    INGRESS._setup(ingress, planner=None, shadow=None, consumer=None, config=cfg.to_dict())  # no lease: no shards
    return ingress


async def _spec() -> dict[str, Any]:
    return SPEC


async def _unreachable() -> Any:
    raise ConnectionError("actor died")


@pytest.mark.parametrize("max_replicas", [1, 4])
def test_every_ingress_builds_a_record_cache_whose_use_its_writer_lease_decides(
        max_replicas: int, monkeypatch: pytest.MonkeyPatch) -> None:
    ingress = _ingress(monkeypatch, ingress_autoscaling={"min_replicas": 1, "max_replicas": max_replicas})
    assert ingress.engine.cache is not None and ingress.engine.cache.ttl_s == ingress.cfg.state.ttl_s
    assert not ingress.engine.sole_writer  # used only once a lease renewal finds this engine the only writer
    assert not ray.is_initialized()  # nothing here starts Ray


def test_a_replica_whose_log_location_cannot_be_written_does_not_start(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match=f"cannot write logs under '{blocker}/logs'"):
        _ingress(monkeypatch, log_uri=str(blocker / "logs"))
    assert _ingress(monkeypatch, log_uri=str(tmp_path / "logs")).cfg.log_uri  # a writable one starts


def test_a_model_spec_that_cannot_be_fetched_is_a_retryable_503_on_every_route(monkeypatch) -> None:
    ingress = _ingress(monkeypatch)
    ingress._spec = Refreshed(_unreachable, 2.0, "model spec")
    body = json.dumps({"agent_id": "a", "observation": [0.0] * 6}).encode()
    error = "model spec not available: ConnectionError: actor died"

    async def main() -> tuple[Any, Any, HTTPException]:
        plan = await ingress.plan_http({b"content-type": b"application/json"}, body)
        health = await ingress.healthz()
        with pytest.raises(HTTPException) as batch:
            await ingress.plan_batch(BatchRequest(requests=[PlanRequest(agent_id="a", observation=[0.0] * 6)]))
        return plan, health, batch.value

    plan, health, batch = asyncio.run(main())
    assert plan == (503, {"error": error})
    assert health.status_code == 503 and json.loads(health.body) == {"error": error, "status": "unavailable"}
    assert batch.status_code == 503 and batch.detail == error


def _stats(last_error: str | None) -> LoggerStats:
    return LoggerStats(written=10, buffered=5, duplicates=0, files=1, dropped=2, last_error=last_error,
                       failing_since=None, retry_in_s=None, run_id="r")


@pytest.mark.parametrize("stats, expected", [
    (None, "telemetry logger unreachable: ConnectionError: actor died"),
    (_stats("PermissionError: cannot write"), "PermissionError: cannot write"),
    (_stats(None), None)])
def test_health_is_degraded_while_the_logger_cannot_write_or_be_reached_and_gauges_say_so(
        monkeypatch, stats: LoggerStats | None, expected: str | None) -> None:
    async def fetch() -> LoggerStats:
        return stats if stats is not None else await _unreachable()

    ingress = _ingress(monkeypatch, logger=SimpleNamespace(stats=_remote(fetch)), log_uri=None)
    ingress._spec = Refreshed(_spec, 2.0, "model spec")

    async def main() -> dict[str, Any]:
        ingress._telemetry.peek()
        await asyncio.sleep(0.01)  # the background refresh of the logger's stats
        return await ingress.healthz()

    health = asyncio.run(main())
    assert health == {"status": "degraded" if expected else "ok", "model_version": "1.0.0",
                      "telemetry_error": expected, "bus_error": None}
    assert ingress.metrics.telemetry == [stats]


class FakeGauge:
    def __init__(self) -> None:
        self.value: float | None = None

    def set(self, value: float) -> None:
        self.value = value


def test_the_loggers_state_is_exported_as_gauges() -> None:
    metrics = ServingMetrics.__new__(ServingMetrics)
    metrics.telemetry_buffered, metrics.telemetry_dropped, metrics.telemetry_failing = (FakeGauge() for _ in range(3))
    metrics.report_telemetry(_stats("OSError: disk full"))
    assert (metrics.telemetry_buffered.value, metrics.telemetry_dropped.value, metrics.telemetry_failing.value) \
        == (5, 2, 1)
    metrics.report_telemetry(_stats(None))
    assert metrics.telemetry_failing.value == 0
    metrics.report_telemetry(None)  # unreachable: failing, counts as last seen
    assert (metrics.telemetry_buffered.value, metrics.telemetry_failing.value) == (5, 1)
