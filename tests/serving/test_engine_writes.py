"""``PlanEngine.settled`` and the engine's writes: durable before a stream request is acknowledged."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from actors.records import AgentRecord
from serving.engine import PlanEngine
from serving.engine_writes import LOG_WAIT_S, EngineWrites
from serving.schema import PlanRequest
from tests.actors.test_streams import make_batch
from tests.serving.test_engine import N_ACT, N_OBS, FakeLogger, FakePlanner, FakeStore, Metrics


class FlakySink(FakeLogger):
    """A telemetry sink that fails while ``failing``, and waits for ``gate`` before it answers."""

    def __init__(self) -> None:
        super().__init__()
        self.failing, self.gate, self.calls = False, asyncio.Event(), 0
        self.gate.set()

    async def log(self, transitions: Any) -> None:
        self.calls += 1
        await self.gate.wait()
        if self.failing:
            raise ConnectionError("redis is down")
        await super().log(transitions)


class FlakyStore(FakeStore):
    """The state store, whose writes fail while ``failing``."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    def submit_put(self, records: list[AgentRecord]) -> Any:
        if self.failing:
            return _fail()
        return super().submit_put(records)


async def _fail() -> None:
    raise TimeoutError("shard unreachable")


def _step(engine: PlanEngine, t: int) -> Any:
    """Agent "a"'s request of step t (from t = 1 it closes the transition of step t - 1)."""
    req = PlanRequest(agent_id="a", observation=[0.1 * t] * N_OBS, reward=None if t == 0 else 1.0,
                      prev_action=None if t == 0 else [0.5] * N_ACT)
    return engine.submit([req], [time.monotonic()])


def _logged(sink: FakeLogger) -> list[int]:
    return [int(t) for batch in sink.batches for t in batch.t]


def test_a_slow_telemetry_call_is_waited_for_a_bounded_time_and_a_failed_one_held_until_it_is_sent() -> None:
    async def main() -> None:
        sink = FlakySink()
        engine = PlanEngine(FakePlanner("1.0.0"), FakeStore(), sink, None, Metrics(), None)
        await _step(engine, 0)
        sink.gate.clear()
        start = time.monotonic()
        await _step(engine, 1)  # its telemetry call hangs: the answer waits for it LOG_WAIT_S at most
        assert time.monotonic() - start >= LOG_WAIT_S and engine.writes.held == 1
        await _step(engine, 2)  # the sink is failing: this one's call goes in the background
        waiting = asyncio.ensure_future(engine.settled())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        sink.gate.set()
        assert await waiting and _logged(sink) == [0, 1]
        sink.failing = True
        await _step(engine, 3)
        assert not await engine.settled()  # tried again there, failed again: still held
        assert engine.writes.held == 1
        sink.failing = False
        await _step(engine, 4)  # the next call sends the held transition first
        assert await engine.settled() and _logged(sink) == [0, 1, 2, 3] and engine.writes.held == 0

    asyncio.run(main())


def test_a_failed_state_write_is_reported_once_to_each_range_of_writes() -> None:
    async def main() -> None:
        store = FlakyStore()
        engine = PlanEngine(FakePlanner("1.0.0"), store, FakeLogger(), None, Metrics(), None)
        store.failing = True
        mark = engine.writes.submitted
        await _step(engine, 0)
        await engine.writes.ordered()  # its state write is sent (and fails)
        store.failing = False
        after = engine.writes.submitted
        await _step(engine, 1)
        assert not await engine.settled(since=mark)
        assert await engine.settled(since=after)  # the failure was before this caller's writes
        assert not await engine.settled()  # the first call without ``since`` covers every write so far
        assert await engine.settled()  # ... and the next one only those since

    asyncio.run(main())


def test_held_transitions_are_bounded_and_the_oldest_dropped_counted() -> None:
    async def main() -> None:
        sink = FlakySink()
        sink.failing = True
        writes = EngineWrites(FakeStore(), sink, lambda coro: asyncio.ensure_future(coro), max_held=50)
        for seed in range(3):
            writes.submit([], writes.log(make_batch(30, seed=seed)))
            await writes.ordered()
        await writes.settled()
        assert (writes.held, writes.dropped) == (50, 40)
        sink.failing = False
        assert await writes.settled()
        assert np.array_equal(sink.batches[-1].t, np.concatenate([make_batch(30, seed=s).t for s in range(3)])[40:])

    asyncio.run(main())


def test_a_cycles_transitions_are_logged_before_its_records_are_written() -> None:
    """A replica dying between the two must leave the records as they were (its requests are then planned
    again and close their transitions again), not new records that answer them without a transition."""
    order: list[str] = []

    class Store(FakeStore):
        def submit_put(self, records: list[AgentRecord]) -> Any:
            order.append("state")
            return super().submit_put(records)

    class Sink(FakeLogger):
        async def log(self, transitions: Any) -> None:
            order.append("telemetry")
            await super().log(transitions)

    async def main() -> None:
        engine = PlanEngine(FakePlanner("1.0.0"), Store(), Sink(), None, Metrics(), None)
        await _step(engine, 0)
        await _step(engine, 1)
        await engine.settled()

    asyncio.run(main())
    assert order == ["state", "telemetry", "state"]  # step 0 closes no transition


def test_until_idle_returns_only_once_no_cycle_runs_or_waits() -> None:
    """The stream consumer reads its next batch then: one read takes what arrived during the cycle."""
    async def main() -> None:
        gate, planner = asyncio.Event(), FakePlanner("1.0.0")
        plan = planner.plan.fn

        async def slow(*args: Any) -> Any:
            await gate.wait()
            return plan(*args)

        planner.plan.remote = slow
        engine = PlanEngine(planner, FakeStore(), FakeLogger(), None, Metrics(), None)
        await asyncio.wait_for(engine.until_idle(), 1.0)  # nothing queued
        answered = asyncio.ensure_future(_step(engine, 0))
        await asyncio.sleep(0.01)
        idle = asyncio.ensure_future(engine.until_idle())
        await asyncio.sleep(0.05)
        assert not idle.done()  # the cycle is planning
        gate.set()
        await answered
        await asyncio.wait_for(idle, 1.0)

    asyncio.run(main())
