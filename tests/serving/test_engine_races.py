"""What happens while a batch waits on the planner or the shards: a reset, a second writer, a slow shadow."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from actors.records import AgentRecord, RecordCache
from serving.engine import PlanEngine
from serving.schema import PlanRequest
from tests.serving.test_engine import N_OBS, FakePlanner, FakeStore, Metrics, local_store, record


class _Held:
    """``handle.plan.remote(...)`` that answers only once ``gate`` is set."""

    def __init__(self, fn: Any, gate: asyncio.Event) -> None:
        self.fn, self.gate = fn, gate

    async def remote(self, *args: Any) -> Any:
        await self.gate.wait()
        return self.fn(*args)


def _req(agent: str = "a1", t: int = 0) -> PlanRequest:
    return PlanRequest(agent_id=agent, observation=[0.1] * N_OBS, t=t, reward=None if t == 0 else 1.0,
                       prev_action=None if t == 0 else [0.5, 0.5])


async def _settle(engine: PlanEngine) -> None:
    while engine._background:
        await asyncio.gather(*list(engine._background))
    if engine.lease.leaser is not None:
        engine.lease.leaser.cancel()


def test_a_reset_during_a_batch_of_its_agent_is_not_undone_by_the_batch() -> None:
    async def main() -> None:
        gate, planner = asyncio.Event(), FakePlanner("1.0.0")
        planner.plan = _Held(planner._plan, gate)
        engine = PlanEngine(planner, local_store(), None, None, Metrics(), None, RecordCache(3600))
        gate.set()
        await engine.run([_req(t=0)], [time.monotonic()])
        gate.clear()
        batch = asyncio.create_task(engine.run([_req(t=1)], [time.monotonic()]))
        await asyncio.sleep(0.02)  # the batch has read a1 and waits for its plan
        reset = asyncio.create_task(engine.reset(["a1"]))
        await asyncio.sleep(0.02)
        gate.set()
        await batch
        assert await reset == 1
        await _settle(engine)
        assert await engine.store.get(["a1"]) == [None] and "a1" not in engine.cache.records

    asyncio.run(main())


class _SlowStore(FakeStore):
    """Reads wait for ``gate``; the lease renewal reports ``writers`` live writers."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.writers = 1

    async def get(self, agent_ids: list[str]) -> list[AgentRecord | None]:
        if self.gate is not None:
            await self.gate.wait()
        return await super().get(agent_ids)

    async def lease(self, writer_id: str, lease_s: float) -> int:
        return self.writers


def test_a_read_that_spans_another_writers_arrival_does_not_fill_the_cache() -> None:
    async def main() -> None:
        store = _SlowStore()
        store.records["a1"] = record("a1")
        store.gate = asyncio.Event()
        engine = PlanEngine(FakePlanner("1.0.0"), store, None, None, Metrics(), None, RecordCache(3600))
        batch = asyncio.create_task(engine.run([_req()], [time.monotonic()]))
        await asyncio.sleep(0.02)  # the sole writer's read of a1 waits on the shards
        assert engine.sole_writer
        store.writers = 2
        await engine.renew_lease()  # another replica writes a1 from now on
        store.gate.set()
        await batch
        await _settle(engine)
        assert engine.cache.records == {}

    asyncio.run(main())


def test_the_cache_is_emptied_when_the_engine_becomes_the_only_writer_again() -> None:
    store = _SlowStore()
    engine = PlanEngine(FakePlanner("1.0.0"), store, None, None, Metrics(), None, RecordCache(3600))
    store.writers = 2
    asyncio.run(engine.renew_lease())
    engine.cache.put([record("a1")])  # e.g. a write that raced the renewal
    store.writers = 1
    asyncio.run(engine.renew_lease())
    assert engine.sole_writer and engine.cache.records == {}


def test_a_slow_shadow_is_skipped_rather_than_piled_up() -> None:
    async def main() -> None:
        gate, shadow = asyncio.Event(), FakePlanner("2.0.0")
        shadow.plan = _Held(shadow._plan, gate)
        engine = PlanEngine(FakePlanner("1.0.0"), FakeStore(), None, shadow, Metrics(), None)
        for i in range(4):
            await engine.run([_req(f"a{i}")], [time.monotonic()])
        await asyncio.sleep(0.01)  # the comparisons start
        assert engine.shadow.in_flight == 2 and engine.shadow_stats.skipped == 2
        gate.set()
        await _settle(engine)
        summary = engine.shadow_stats.summary()
        assert (summary["batches"], summary["skipped"]) == (2, 2) and engine.shadow.in_flight == 0

    asyncio.run(main())
