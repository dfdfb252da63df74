"""The record cache is used only while the engine's writer lease says it is the one writer."""

from __future__ import annotations

import asyncio
import time

from actors.records import RecordCache
from actors.state import AgentStateShard
from serving.engine import JOIN_S, PlanEngine
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
            engine._leaser.cancel()

    asyncio.run(scenario())
