"""PlanEngine's batch path without Ray: fake planner, shadow, state store and metrics."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import numpy as np

from serving.engine import PlanEngine, RecordCache
from serving.schema import PlanRequest

N_OBS, N_ACT, H = 6, 2, 4


class _Remote:
    """``handle.method.remote(...)`` as a Serve deployment handle answers it: an awaitable."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    async def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


class _Planner:
    """Plans zero actions and predicts no motion; scores every transition with a fixed error."""

    def __init__(self, version: str, error: float) -> None:
        self.version, self.error = version, error
        self.plan, self.score = _Remote(self._plan), _Remote(self._score)

    def _plan(self, obs: np.ndarray, **_: Any) -> dict[str, Any]:
        n = len(obs)
        return {"actions": np.zeros((n, N_ACT), np.float32), "warm": np.zeros((n, H, N_ACT), np.float32),
                "hidden": None, "trajectory": np.repeat(obs[:, None], H + 1, 1), "uncertainty": np.zeros(n),
                "fallback": np.zeros(n, bool), "model_version": self.version}

    def _score(self, obs: np.ndarray, actions: np.ndarray, next_obs: np.ndarray) -> dict[str, Any]:
        errors = np.full(len(obs), self.error)
        return {"model_version": self.version, "errors": errors, "mean_error": float(errors.mean())}


class _Store:
    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    async def get(self, agent_ids: list[str]) -> list[dict[str, Any] | None]:
        return [self.records.get(a) for a in agent_ids]

    def submit_put(self, records: list[dict[str, Any]]) -> Any:
        self.records.update((r["agent_id"], r) for r in records)  # submitted at once, as the real store's
        return _count(len(records))


async def _count(n: int) -> int:
    return n


class _Metric:
    def __init__(self) -> None:
        self.calls: list[tuple[float, dict[str, str] | None]] = []

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.calls.append((value, tags))

    inc = set = observe


class _Metrics(defaultdict):
    def __init__(self) -> None:
        super().__init__(_Metric)

    def __getattr__(self, name: str) -> _Metric:
        return self[name]


def _run_episode(engine: PlanEngine, steps: int) -> None:
    async def main() -> None:
        for t in range(steps):
            obs = [0.1 * (t + 1)] * N_OBS  # moves while the model predicts standing still: error > 0
            await engine.run([PlanRequest(agent_id="a", observation=obs, reward=None if t == 0 else 1.0)], [0.0])
            while engine._background:  # the state write and the shadow comparison
                await asyncio.gather(*list(engine._background))

    asyncio.run(main())


def test_prediction_error_is_recorded_once_per_role_with_a_shadow() -> None:
    metrics = _Metrics()
    engine = PlanEngine(_Planner("1.0.0", 0.5), _Store(), None, _Planner("2.0.0", 0.25), metrics, None)
    _run_episode(engine, steps=3)  # 2 closed transitions, one per batch after the first
    roles = [tags["role"] for _, tags in metrics.prediction_error.calls]
    assert roles.count("production") == 2 and roles.count("shadow") == 2, roles
    assert engine.shadow_stats.summary()["mean_prediction_error"] == {"production": 0.5, "shadow": 0.25}


class _CountingStore(_Store):
    """A store that counts the agents it was asked to read, and forgets on reset."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    async def get(self, agent_ids: list[str]) -> list[dict[str, Any] | None]:
        self.reads.extend(agent_ids)
        return await super().get(agent_ids)

    async def reset(self, agent_ids: list[str]) -> int:
        return sum(self.records.pop(a, None) is not None for a in agent_ids)


def _step(engine: PlanEngine, agent: str, request_id: str | None = None) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        req = PlanRequest(agent_id=agent, observation=[0.1] * N_OBS, request_id=request_id)
        answer = (await engine.run([req], [0.0]))[0]
        while engine._background:
            await asyncio.gather(*list(engine._background))
        return answer

    return asyncio.run(main())


def test_record_cache_reads_each_agent_from_the_shards_once() -> None:
    store = _CountingStore()
    store.records["known"] = {"agent_id": "known", "obs": None, "request_id": None, "updated": 0.0}
    engine = PlanEngine(_Planner("1.0.0", 0.5), store, None, None, _Metrics(), None, RecordCache(ttl_s=3600))
    for _ in range(3):
        _step(engine, "known")
        _step(engine, "new")
    assert sorted(store.reads) == ["known", "new"]  # then each is cached by its first write
    assert store.records["new"]["t"] == 2 == engine.cache.records["new"]["t"]  # the shards keep every write


def test_record_cache_replays_retries_and_forgets_on_reset() -> None:
    store = _CountingStore()
    engine = PlanEngine(_Planner("1.0.0", 0.5), store, None, None, _Metrics(), None, RecordCache(ttl_s=3600))
    first = _step(engine, "a", request_id="r1")
    assert _step(engine, "a", request_id="r1") == first | {"replayed": True}
    assert asyncio.run(engine.reset(["a"])) == 1 and "a" not in engine.cache.records
    assert not _step(engine, "a", request_id="r1")["replayed"]


def test_record_cache_drops_idle_agents() -> None:
    cache = RecordCache(ttl_s=10.0)
    cache.put([{"agent_id": "old", "updated": 0.0}])
    cache._swept -= RecordCache.SWEEP_S + 1  # a sweep is due
    cache.put([{"agent_id": "fresh", "updated": time.time()}])
    assert cache.get(["old", "fresh"])[0] is None and cache.get(["fresh"])[0] is not None
    cache.records["stale"] = {"agent_id": "stale", "updated": time.time() - 11}  # idle past the TTL, not swept
    assert cache.get(["stale"]) == [None]


def test_reset_counts_an_agent_only_the_cache_knew() -> None:
    engine = PlanEngine(_Planner("1.0.0", 0.5), _CountingStore(), None, None, _Metrics(), None, RecordCache(3600))
    engine.cache.put([{"agent_id": "cached", "updated": time.time()}])
    assert asyncio.run(engine.reset(["cached"])) == 1 and asyncio.run(engine.reset(["cached"])) == 0
