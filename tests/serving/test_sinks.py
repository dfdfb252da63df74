"""The engine's telemetry sinks: ``StreamSink`` against a real redis-server, read back by the ingest consumer."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis

from actors.ingest import IngestConfig, IngestConsumer
from actors.ports import free_port
from actors.streams import BusNames
from serving.config import AppConfig
from serving.sinks import ActorSink, StreamSink, start_telemetry
from tests.actors.test_ingest import FAST, drain, sort_rows
from tests.actors.test_streams import assert_same, make_batch
from tests.redis_fixtures import redis_client, redis_server  # noqa: F401 (fixtures)
from worldmodel.data import read_transitions


def test_stream_sink_round_trip_through_the_ingest_consumer(redis_client, redis_server, tmp_path):
    bus = BusNames("app")
    sent = make_batch(200, seed=11)
    sink = StreamSink(redis_server.url, bus.telemetry)
    asyncio.run(sink.log(sent.select(np.arange(120))))
    asyncio.run(sink.log(sent.select(np.arange(120, 200))))  # another event loop: another connection
    asyncio.run(sink.log(sent.select(np.arange(0))))  # nothing to send: no entry
    assert redis_client.xlen(bus.telemetry) == 200
    config = IngestConfig(**{**vars(FAST), "stream": bus.telemetry, "group": bus.ingest_group,
                             "dead_letters": bus.telemetry_dead_letters})
    consumer = IngestConsumer(redis_server.url, str(tmp_path), "c1", config)
    consumer.start()
    drain(consumer, redis_client, bus.telemetry)
    assert_same(read_transitions(str(tmp_path)), sort_rows(sent))


def test_stream_sink_raises_when_redis_cannot_be_reached():
    sink = StreamSink(f"redis://127.0.0.1:{free_port()}/0", "s", timeout_s=1.0)
    with pytest.raises(redis.ConnectionError):
        asyncio.run(sink.log(make_batch(3)))


def test_actor_sink_awaits_the_loggers_log_call():
    class Handle:
        def __init__(self) -> None:
            self.sent: list = []
            self.log = self

        async def remote(self, transitions):
            self.sent.append(transitions)

    handle, batch = Handle(), make_batch(2)
    asyncio.run(ActorSink(handle).log(batch))
    assert handle.sent == [batch]


def test_no_log_uri_means_no_sink_and_no_logger():
    assert start_telemetry(AppConfig(model="m", redis_url="redis://127.0.0.1:1/0")) == (None, None)
