"""The app's logger on the fleet bus: a StreamLogger killed mid-stream loses and repeats no transition."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import ray

from actors.ingest import IngestConfig
from actors.stream_logger import StreamLogger
from actors.streams import BusNames, append_transitions
from actors.telemetry import FlushResult
from serving.config import AppConfig
from serving.sinks import start_telemetry
from tests.actors.test_ingest import sort_rows
from tests.actors.test_streams import assert_same, make_batch
from tests.ray_fixtures import ray_local  # noqa: F401 (fixture)
from tests.redis_fixtures import redis_client, redis_server  # noqa: F401 (fixtures)
from worldmodel.data import read_transitions

SLOW_FLUSH = IngestConfig(flush_s=30.0, block_ms=50, claim_idle_s=70.0)
"""Files only when asked (``flush``): what a test counts is then what the flush wrote."""


def test_flush_writes_what_the_stream_holds_and_stats_read_as_the_telemetry_loggers(redis_client, redis_server,
                                                                                    tmp_path):
    bus, sent = BusNames("plain"), make_batch(500, seed=21, agents=5)
    logger = StreamLogger(redis_server.url, str(tmp_path), "tl", "plain", config=SLOW_FLUSH)
    try:
        append_transitions(redis_client, sent.select(np.arange(300)), bus.telemetry)
        assert logger.flush(timeout_s=30) == FlushResult(300, 0, None)
        append_transitions(redis_client, sent.select(np.arange(300, 500)), bus.telemetry)
        time.sleep(0.3)  # read by the thread, held: pending in Redis
        held = logger.stats()
        assert (held.written, held.buffered, held.run_id, held.held_in_stream) == (300, 200, "tl-0", True)
        assert held.dropped == 0 and held.last_error is None
    finally:
        stopped = logger.stop()  # the last flush writes what it held
    assert (stopped.written, stopped.buffered) == (500, 0)
    assert redis_client.xpending(bus.telemetry, bus.ingest_group)["pending"] == 0
    assert_same(read_transitions(str(tmp_path)), sort_rows(sent))


def test_a_killed_stream_logger_restarts_and_logs_every_transition_once(ray_local, redis_client, redis_server,
                                                                        tmp_path):
    cfg = AppConfig(model="m", log_uri=str(tmp_path / "logs"), redis_url=redis_server.url, bus_prefix="kill",
                    telemetry_name="kill-telemetry")
    sink, logger = start_telemetry(cfg)
    sent = make_batch(3000, seed=22, agents=10)
    chunks = np.array_split(np.arange(len(sent)), 6)
    try:
        for i, chunk in enumerate(chunks):
            asyncio.run(sink.log(sent.select(chunk)))
            if i == 1:
                assert ray.get(logger.flush.remote(timeout_s=30)).unwritten == 0  # chunks 0-1 in a file
            if i == 3:
                time.sleep(0.5)
                assert ray.get(logger.ingest_stats.remote()).buffered > 0  # it dies holding chunks 2-3
                ray.kill(logger, no_restart=False)
        asyncio.run(sink.log(sent.select(chunks[0])))  # a producer's duplicate, after the restart
        flushed = ray.get(logger.flush.remote(timeout_s=60), timeout=90)
        assert (flushed.unwritten, flushed.error) == (0, None)
        restarted = ray.get(logger.stats.remote())  # counts from the restart: chunks 2-5 written, chunk 0 again dropped
        assert (restarted.written, restarted.duplicates) == (2000, 500)
        assert_same(read_transitions(str(tmp_path / "logs")), sort_rows(sent))  # 0 lost, 0 duplicated
        bus = BusNames("kill")
        assert redis_client.xpending(bus.telemetry, bus.ingest_group)["pending"] == 0
    finally:
        ray.kill(logger, no_restart=True)
