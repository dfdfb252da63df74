"""PlanEngine's batch path without Ray: fake planner, shadow, state store and metrics.

The fakes here are shared by the other engine tests (``test_engine_*.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from actors.records import AgentRecord, AgentRecords, RecordCache
from actors.state import AgentStateShard, StateConfig
from actors.state_store import AgentStateStore
from planners.service import PlanBatch
from serving import shadow
from serving.engine import PlanEngine
from serving.schema import PlanRequest

N_OBS, N_ACT, H = 6, 2, 4


class _Remote:
    """``handle.method.remote(...)`` as a Serve deployment handle answers it: an awaitable."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    async def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


class FakePlanner:
    """Plans the action 0.5 everywhere and predicts no motion; scores every transition with a fixed error."""

    def __init__(self, version: str, error: float = 0.5) -> None:
        self.version, self.error = version, error
        self.plan, self.score = _Remote(self._plan), _Remote(self._score)
        self.calls = 0

    def _plan(self, obs: np.ndarray, *_: Any) -> PlanBatch:
        self.calls += 1
        n = len(obs)
        return PlanBatch(actions=np.full((n, N_ACT), 0.5, np.float32), warm_start=np.zeros((n, H, N_ACT), np.float32),
                         trajectory=np.repeat(obs[:, None], H + 1, 1), disagreement=np.zeros(n, np.float32),
                         fallback_reason=np.zeros(n, np.int8), expected_return=np.zeros(n, np.float32), hidden=None,
                         iterations=1, elapsed_ms=1.0, model_version=self.version, decision=np.zeros(n, np.int8),
                         shield=np.zeros(n, np.int8), margin=np.full(n, np.inf, np.float32), fallback_source="zero")

    def _score(self, obs: np.ndarray, actions: np.ndarray, new_obs: np.ndarray) -> dict[str, Any]:
        errors = np.full(len(obs), self.error)
        return {"model_version": self.version, "errors": errors, "mean_error": float(errors.mean())}


class FakeStore:
    """The state store's calls, in memory; records go through their column form as over Ray."""

    def __init__(self) -> None:
        self.records: dict[str, AgentRecord] = {}

    async def get(self, agent_ids: list[str]) -> list[AgentRecord | None]:
        return [self.records.get(a) for a in agent_ids]

    def submit_put(self, records: list[AgentRecord]) -> Any:
        sent = AgentRecords.pack(records).unpack()
        self.records.update((r.agent_id, r) for r in sent)  # submitted at once, as the real store's
        return _count(len(records))

    async def reset(self, agent_ids: list[str]) -> int:
        return sum(self.records.pop(a, None) is not None for a in agent_ids)

    async def lease(self, writer_id: str, lease_s: float) -> int:
        return 1


async def _count(n: int) -> int:
    return n


class _Submitted:
    """``handle.method.remote(...)`` for an object in this process: runs the call now, as Ray submits it at
    once (so calls take effect in submission order), and returns an awaitable of its result."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        call = self.fn(*args)
        try:
            call.send(None)
        except StopIteration as done:
            result = done.value
        else:
            raise AssertionError(f"{self.fn.__name__} waited: a shard call must not")
        future = asyncio.get_running_loop().create_future()
        future.set_result(result)
        return future


class LocalShard:
    """A real ``AgentStateShard`` behind an actor-handle-like interface, without Ray."""

    def __init__(self, shard: AgentStateShard) -> None:
        self.shard = shard
        for name in ("get", "put", "reset", "lease"):
            setattr(self, name, _Submitted(getattr(shard, name)))


def local_store(shards: int = 2, name: str = "local") -> AgentStateStore:
    """The real store over real shards (no snapshots), in this process."""
    cfg = StateConfig(shards=shards, name=name)
    return AgentStateStore(cfg, [LocalShard(AgentStateShard(n, None, 1.0, cfg.ttl_s)) for n in cfg.shard_names])


class FakeLogger:
    """A telemetry sink (``serving.sinks.TelemetrySink``): keeps every batch it is sent."""

    def __init__(self) -> None:
        self.batches: list[Any] = []

    async def log(self, transitions: Any) -> None:
        self.batches.append(transitions)


class _Metric:
    def __init__(self) -> None:
        self.calls: list[tuple[float, dict[str, str] | None]] = []

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.calls.append((value, tags))

    inc = set = observe


class Metrics(defaultdict):
    def __init__(self) -> None:
        super().__init__(_Metric)

    def __getattr__(self, name: str) -> _Metric:
        return self[name]


def settle(engine: PlanEngine) -> None:
    """Wait for the engine's background work (the state write, the shadow comparison)."""
    async def main() -> None:
        while engine._background:
            await asyncio.gather(*list(engine._background))

    asyncio.run(main())


def run(engine: PlanEngine, *requests: PlanRequest) -> list[Any]:
    """One batch through the engine, its background work finished."""
    async def main() -> list[Any]:
        answers = await engine.run(list(requests), [time.monotonic()] * len(requests))
        while engine._background:
            await asyncio.gather(*list(engine._background))
        if engine.lease.leaser is not None:
            engine.lease.leaser.cancel()
        return answers

    return asyncio.run(main())


def _run_episode(engine: PlanEngine, steps: int) -> None:
    for t in range(steps):
        obs = [0.1 * (t + 1)] * N_OBS  # moves while the model predicts standing still: error > 0
        run(engine, PlanRequest(agent_id="a", observation=obs, reward=None if t == 0 else 1.0,
                                prev_action=None if t == 0 else [0.5] * N_ACT))


def test_prediction_error_is_recorded_once_per_role_with_a_shadow() -> None:
    metrics = Metrics()
    engine = PlanEngine(FakePlanner("1.0.0", 0.5), FakeStore(), None, FakePlanner("2.0.0", 0.25), metrics, None)
    _run_episode(engine, steps=3)  # 2 closed transitions, one per batch after the first
    roles = [tags["role"] for _, tags in metrics.prediction_error.calls]
    assert roles.count("production") == 2 and roles.count("shadow") == 2, roles
    assert engine.shadow_stats.summary()["mean_prediction_error"] == {"production": 0.5, "shadow": 0.25}
    shadow_mse = [value for value, tags in metrics.prediction_mse.calls if tags["model_version"] == "2.0.0"]
    assert shadow_mse == pytest.approx([0.25 ** 2 / N_OBS] * 2)  # the shadow version's own MSE series


class _FailingShadow(FakePlanner):
    """A shadow version whose every call fails (e.g. its replica died)."""

    def _plan(self, obs: np.ndarray, *_: Any) -> PlanBatch:
        raise RuntimeError("shadow replica died")


def test_a_failing_shadow_changes_no_answer_and_counts_nothing(monkeypatch) -> None:
    warned: list[str] = []  # Serve's logger may not propagate to pytest's handler: catch the call itself
    monkeypatch.setattr(shadow.logger, "warning", lambda message, *args: warned.append(message % args))
    alone = PlanEngine(FakePlanner("1.0.0"), FakeStore(), None, None, Metrics(), None)
    shadowed = PlanEngine(FakePlanner("1.0.0"), FakeStore(), None, _FailingShadow("2.0.0"), Metrics(), None)
    request = PlanRequest(agent_id="a", observation=[0.1] * N_OBS)
    assert [a.action for a in run(shadowed, request)] == [a.action for a in run(alone, request)]
    assert warned == ["shadow comparison failed: shadow replica died"]
    assert shadowed.shadow_stats.summary()["batches"] == 0
    assert alone.shadow_stats.summary()["mean_action_difference"] is None


class _CountingStore(FakeStore):
    """A store that counts the agents it was asked to read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    async def get(self, agent_ids: list[str]) -> list[AgentRecord | None]:
        self.reads.extend(agent_ids)
        return await super().get(agent_ids)


def record(agent: str, updated: float | None = None, **fields: Any) -> AgentRecord:
    """A record of ``agent`` between episodes (no observation), as the shards would hold it."""
    now = time.time() if updated is None else updated
    return AgentRecord(agent_id=agent, eps_id=f"{agent}-e0", t=0, model_version="1.0.0", updated=now,
                       request_ids=(), answer=None, **fields)


def _step(engine: PlanEngine, agent: str, request_id: str | None = None) -> Any:
    return run(engine, PlanRequest(agent_id=agent, observation=[0.1] * N_OBS, request_id=request_id))[0]


def test_record_cache_reads_each_agent_from_the_shards_once() -> None:
    store = _CountingStore()
    store.records["known"] = record("known")
    engine = PlanEngine(FakePlanner("1.0.0", 0.5), store, None, None, Metrics(), None, RecordCache(ttl_s=3600))
    for _ in range(3):
        _step(engine, "known")
        _step(engine, "new")
    assert sorted(store.reads) == ["known", "new"]  # then each is cached by its first write
    assert store.records["new"].t == 2 == engine.cache.records["new"].t  # the shards keep every write


def test_record_cache_replays_retries_and_forgets_on_reset() -> None:
    store = _CountingStore()
    engine = PlanEngine(FakePlanner("1.0.0", 0.5), store, None, None, Metrics(), None, RecordCache(ttl_s=3600))
    first = _step(engine, "a", request_id="r1")
    assert _step(engine, "a", request_id="r1") == first.replay()
    assert asyncio.run(engine.reset(["a"])) == 1 and "a" not in engine.cache.records
    assert not _step(engine, "a", request_id="r1").replayed


def test_record_cache_drops_idle_agents() -> None:
    cache = RecordCache(ttl_s=10.0)
    cache.put([record("old", updated=0.0)])
    cache._swept -= RecordCache.SWEEP_S + 1  # a sweep is due
    cache.put([record("fresh")])
    assert cache.get(["old", "fresh"])[0] is None and cache.get(["fresh"])[0] is not None
    cache.records["stale"] = record("stale", updated=time.time() - 11)  # idle past the TTL, not swept
    assert cache.get(["stale"]) == [None]


def test_reset_counts_an_agent_only_the_cache_knew() -> None:
    engine = PlanEngine(FakePlanner("1.0.0", 0.5), _CountingStore(), None, None, Metrics(), None, RecordCache(3600))
    engine.cache.put([record("cached")])
    assert asyncio.run(engine.reset(["cached"])) == 1 and asyncio.run(engine.reset(["cached"])) == 0
