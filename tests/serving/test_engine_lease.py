"""The record cache is used only while the engine's writer lease says it is the one writer."""

from __future__ import annotations

import asyncio
import time

import pytest

import serving.engine_lease as lease_module
from actors.records import RecordCache
from actors.state import AgentStateShard
from serving.engine import PlanEngine
from serving.engine_lease import JOIN_S
from serving.schema import PlanRequest
from tests.serving.test_engine import N_OBS, FakeLogger, FakePlanner, Metrics, local_store, run


def _req(t: int) -> PlanRequest:
    return PlanRequest(agent_id="a1", observation=[float(t)] * N_OBS, reward=None if t == 0 else 1.0, t=t,
                       prev_action=None if t == 0 else [0.5, 0.5])


def test_a_second_writer_turns_the_first_ones_cache_off_and_nothing_is_read_stale() -> None:
    store, logger = local_store(), FakeLogger()
    first = PlanEngine(FakePlanner("1.0.0"), store, logger, None, Metrics(), None, RecordCache(3600))
    second = PlanEngine(FakePlanner("1.0.0"), store, logger, None, Metrics(), None, RecordCache(3600))
    run(first, _req(0))
    assert first.sole_writer and "a1" in first.cache.records  # alone: it keeps its own copy
    run(second, _req(1))  # the agent's next step reaches the other replica
    assert asyncio.run(first.renew_lease()) == 2
    assert not first.sole_writer and first.cache.records == {}
    run(first, _req(2))  # read from the shards: the record the second replica wrote
    assert first.cache.records == {}  # and nothing is cached while another writer is live
    rows = [(str(b.eps_id[0]), int(b.t[0])) for b in logger.batches]
    assert [t for _, t in rows] == [0, 1] and rows[0][0] == rows[1][0]  # one episode, no step lost or repeated


def test_a_shard_counts_only_writers_whose_lease_is_live() -> None:
    shard = AgentStateShard("s", None, 1.0, 3600.0)
    assert asyncio.run(shard.lease("w1", 0.05)) == 1
    assert asyncio.run(shard.lease("w2", 10.0)) == 2
    time.sleep(0.1)  # w1 stopped renewing
    assert asyncio.run(shard.lease("w2", 10.0)) == 1


def test_a_writer_joining_another_waits_until_the_other_has_turned_its_cache_off() -> None:
    """Without the wait, the first writer would answer from its cache for up to a renewal period after the
    second one starts writing (an agent whose steps alternate between them would lose one)."""
    store, logger = local_store(), FakeLogger()

    async def scenario() -> None:
        first = PlanEngine(FakePlanner("1.0.0"), store, logger, None, Metrics(), None, RecordCache(3600))
        second = PlanEngine(FakePlanner("1.0.0"), store, logger, None, Metrics(), None, RecordCache(3600))
        await first.join()
        assert first.sole_writer
        start = time.monotonic()
        await second.join()  # the first one's renewals run meanwhile
        assert time.monotonic() - start >= JOIN_S
        assert not first.sole_writer and not second.sole_writer
        for engine in (first, second):
            engine.lease.leaser.cancel()

    asyncio.run(scenario())


def test_an_idle_writer_leaves_so_the_busy_one_uses_its_cache_and_rejoins_at_its_next_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTTP ingress of a fleet on the bus: idle, it must not keep the busy consumer's cache off."""
    for name, seconds in (("LEASE_RENEW_S", 0.05), ("JOIN_S", 0.1)):
        monkeypatch.setattr(lease_module, name, seconds)
    store, logger = local_store(), FakeLogger()

    async def step(engine: PlanEngine, t: int) -> None:
        await engine.run([_req(t)], [time.monotonic()])
        await engine.settled()

    async def scenario() -> None:
        busy = PlanEngine(FakePlanner("1.0.0"), store, logger, None, Metrics(), None, RecordCache(3600),
                          leave_idle_s=None)  # a stream consumer
        idle = PlanEngine(FakePlanner("1.0.0"), store, logger, None, Metrics(), None, RecordCache(3600),
                          leave_idle_s=0.3)
        await step(idle, 0)
        await step(busy, 1)  # joined beside the idle one: no cache
        assert not busy.sole_writer and busy.cache.records == {}
        await asyncio.sleep(0.5)  # the idle one leaves; the busy one's renewal finds itself alone
        for t in range(2, 9):
            await step(busy, t)
        assert idle.lease.leaser is None and busy.sole_writer and "a1" in busy.cache.records
        start = time.monotonic()
        await step(idle, 9)  # joins again, and waits for the busy one to turn its cache off
        assert time.monotonic() - start >= 0.1 and not busy.sole_writer and busy.cache.records == {}
        await step(busy, 10)  # reads the record the other one wrote
        for engine in (busy, idle):
            if engine.lease.leaser is not None:
                engine.lease.leaser.cancel()

    asyncio.run(scenario())
    rows = [(str(b.eps_id[0]), int(b.t[0])) for b in logger.batches]
    assert [t for _, t in rows] == list(range(10)) and len({e for e, _ in rows}) == 1  # one episode, nothing lost
