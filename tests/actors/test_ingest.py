"""The ingest consumer against a real redis-server: exactly what was sent, once, whatever dies when."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis

from actors import streams
from actors.ingest import IngestConfig, IngestConsumer
from actors.ingest_window import RecentKeys
from actors.redis_server import RedisServer
from tests.actors.test_streams import assert_same, make_batch
from tests.redis_fixtures import redis_client, redis_server  # noqa: F401 (fixtures)
from worldmodel.data import list_log_files, read_transitions
from worldmodel.data.compact import compact

FAST = IngestConfig(flush_rows=300, flush_s=0.1, block_ms=50, claim_idle_s=0.4, read_count=200)


def sort_rows(batch):
    return batch.select(np.lexsort((batch.timestamp, batch.t, batch.eps_id.astype(str), batch.agent_id.astype(str))))


def drain(consumer: IngestConsumer, client: redis.Redis, stream: str = streams.TELEMETRY_STREAM) -> None:
    """Step until every entry of the stream is read and acknowledged, then flush."""
    for _ in range(200):
        consumer.step()
        info = client.xinfo_groups(stream)[0]
        if info["lag"] == 0 and not consumer.stats().buffered and info["pending"] == 0:
            return
        if info["lag"] == 0:
            consumer.flush()
    raise AssertionError(f"not drained: {client.xinfo_groups(stream)}, {consumer.stats()}")


def test_ingest_writes_exactly_what_was_sent_one_file_per_flush(redis_client, redis_server, tmp_path):
    sent = make_batch(1000, seed=1, agents=7)
    streams.append_transitions(redis_client, sent)
    consumer = IngestConsumer(redis_server.url, str(tmp_path), "c1", FAST)
    consumer.start()
    drain(consumer, redis_client)
    files = list_log_files(str(tmp_path))
    assert all(os.path.relpath(f, tmp_path).count("/") == 1 for f in files)  # <day>/part-*.parquet
    assert len(files) == consumer.stats().files <= 1000 // 200 + 1  # agents share a file
    assert set(pq.read_table(files[0]).column("agent_id").to_pylist()) > {"car-0"}
    assert pq.read_schema(files[0]).metadata[b"fleetwm.stream_ids"].startswith(streams.TELEMETRY_STREAM.encode())
    assert_same(read_transitions(str(tmp_path)), sort_rows(sent))
    stats = consumer.stats()
    assert (stats.read, stats.written, stats.duplicates, stats.dead_letters) == (1000, 1000, 0, 0)


def test_a_consumer_dead_after_writing_before_acking_writes_nothing_twice(redis_client, redis_server, tmp_path):
    sent = make_batch(500, seed=2)
    streams.append_transitions(redis_client, sent)
    dying = IngestConsumer(redis_server.url, str(tmp_path), "c1", FAST)
    dying.start()
    dying._ack = lambda: None  # the process dies here: file durable, entries never acknowledged
    while dying.stats().read < 500:
        dying.step()
    dying.flush()
    assert redis_client.xpending(streams.TELEMETRY_STREAM, streams.INGEST_GROUP)["pending"] == 500
    # Compaction in between: the ledger finds the rows in the merged file.
    day = os.path.relpath(list_log_files(str(tmp_path))[0], tmp_path).split("/")[0]
    compact(str(tmp_path), day, dry_run=False)
    restarted = IngestConsumer(redis_server.url, str(tmp_path), "c1", FAST)
    restarted.start()
    more = make_batch(200, seed=3)
    streams.append_transitions(redis_client, more)
    drain(restarted, redis_client)
    assert restarted.stats().duplicates == 500 and restarted.stats().written == 200
    assert_same(read_transitions(str(tmp_path)), sort_rows(type(sent).concat([sent, more])))


def test_a_flood_of_bad_entries_is_dead_lettered_and_good_traffic_logged(redis_client, redis_server, tmp_path):
    good = make_batch(300, seed=4)
    payloads = streams.encode_transitions(good)
    nan = streams.encode_transitions(make_batch(1, seed=5))[0]
    at = streams._HEADER.size  # obs[0] of the one row
    nan = nan[:at] + np.float32(np.nan).tobytes() + nan[at + 4:]
    pipe = redis_client.pipeline(transaction=False)
    for i, payload in enumerate(payloads):
        pipe.xadd(streams.TELEMETRY_STREAM, {streams.FIELD: payload})
        for bad in ({b"x": b"1"}, {streams.FIELD: b"junk"}, {streams.FIELD: payload[:-1]}, {streams.FIELD: nan}):
            pipe.xadd(streams.TELEMETRY_STREAM, bad)
    pipe.execute()
    consumer = IngestConsumer(redis_server.url, str(tmp_path), "c1", FAST)
    consumer.start()
    drain(consumer, redis_client)
    assert consumer.stats().dead_letters == 1200 and redis_client.xlen(streams.TELEMETRY_DEAD_LETTERS) == 1200
    reasons = {fields[b"reason"].split(b" ")[0] for _, fields in redis_client.xrange(streams.TELEMETRY_DEAD_LETTERS)}
    assert reasons == {b"entry", b"payload", b"non-finite"}
    assert_same(read_transitions(str(tmp_path)), sort_rows(good))


def test_a_live_consumer_claims_a_dead_ones_pending_entries(redis_client, redis_server, tmp_path):
    sent = make_batch(400, seed=6)
    streams.append_transitions(redis_client, sent)
    dead = IngestConsumer(redis_server.url, str(tmp_path), "dead", FAST)
    dead.start()
    dead.step()  # reads 200 entries, then dies holding them
    assert dead.stats().buffered == 200
    live = IngestConsumer(redis_server.url, str(tmp_path), "live", FAST)
    live.start()
    time.sleep(FAST.claim_idle_s + 0.1)
    drain(live, redis_client)
    assert live.stats().claimed == 200
    assert_same(read_transitions(str(tmp_path)), sort_rows(sent))


def test_a_redis_restart_mid_stream_loses_nothing_acknowledged(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        client = redis.Redis.from_url(server.url)
        first, second = make_batch(600, seed=7), make_batch(400, seed=8)
        streams.append_transitions(client, first)
        consumer = IngestConsumer(server.url, str(tmp_path / "logs"), "c1", FAST)
        consumer.start()
        consumer.step()
        consumer.flush()  # 200 written and acknowledged
        server.kill()  # a crash: only the AOF survives
        with pytest.raises(redis.ConnectionError):
            consumer.step()
        server.start()
        assert client.xinfo_groups(streams.TELEMETRY_STREAM)[0]["pending"] == 0  # the acknowledgements persisted
        streams.append_transitions(client, second)
        drain(consumer, client)
        assert_same(read_transitions(str(tmp_path / "logs")), sort_rows(type(first).concat([first, second])))
    finally:
        server.stop()


def test_config_refuses_a_claim_time_shorter_than_a_flush():
    with pytest.raises(ValueError, match="claim_idle_s=1"):
        IngestConfig(flush_s=10, claim_idle_s=1)


def test_a_transition_sent_again_in_a_later_flush_is_written_once(redis_client, redis_server, tmp_path):
    # The engine sends a transition twice when a replica dies between its telemetry append and its state write.
    sent = make_batch(300, seed=9)
    streams.append_transitions(redis_client, sent)
    consumer = IngestConsumer(redis_server.url, str(tmp_path), "c1", FAST)
    consumer.start()
    drain(consumer, redis_client)
    streams.append_transitions(redis_client, sent.select(np.arange(50)))  # a flush later
    drain(consumer, redis_client)
    assert (consumer.stats().written, consumer.stats().duplicates) == (300, 50)
    # A consumer starting later (another name: another process) knows the group's recent files.
    streams.append_transitions(redis_client, sent.select(np.arange(50, 120)))
    later = IngestConsumer(redis_server.url, str(tmp_path), "c2", FAST)
    later.start()
    drain(later, redis_client)
    assert (later.stats().written, later.stats().duplicates) == (0, 70)
    assert_same(read_transitions(str(tmp_path)), sort_rows(sent))


def test_recent_keys_are_exact_and_forget_idle_episodes():
    recent = RecentKeys(window_s=10.0)
    agents, eps = np.array(["a", "a", "b", "a"], object), np.array(["e", "e", "e", "f"], object)
    keys = recent.keys(agents, eps, np.array([0, 0, 0, 0]))
    assert recent.fresh(keys).tolist() == [True, False, True, True]  # the second row repeats the first
    recent.add(keys, now=0.0)
    later = recent.keys(np.array(["a", "a", "b"], object), np.array(["e", "e", "e"], object), np.array([0, 1, 5]))
    assert recent.fresh(later).tolist() == [False, True, True]
    recent.add(later, now=5.0)
    steps = np.arange(2, 1000)
    recent.add(recent.keys(np.full(len(steps), "a", object), np.full(len(steps), "e", object), steps), now=6.0)
    assert recent.runs == 4  # a/e 0..999 is one run; b/e {0}, {5}; a/f {0}
    recent.add(keys[:0], now=15.5)  # a/f was last added at 0 and b/e at 5: past the window
    assert recent.episodes == 1
    again = recent.keys(np.array(["a", "b"], object), np.array(["f", "e"], object), np.array([0, 5]))
    assert recent.fresh(again).tolist() == [True, True]


def test_a_flush_failing_between_two_days_files_writes_the_first_days_rows_once(redis_client, redis_server,
                                                                               tmp_path):
    sent = make_batch(200, seed=10)
    days = np.where(np.arange(200) < 100, np.datetime64("2026-12-06T23:59:59", "us"),
                    np.datetime64("2026-12-07T00:00:01", "us"))
    sent = dataclasses.replace(sent, timestamp=days)
    streams.append_transitions(redis_client, sent)
    consumer = IngestConsumer(redis_server.url, str(tmp_path), "c1", FAST)
    consumer.start()
    consumer.step()
    write, calls = consumer.writer.write_file, []

    def second_fails_once(planned, metadata=None):
        calls.append(planned.path)
        if len(calls) == 2:
            raise OSError("disk full")
        return write(planned, metadata)

    consumer.writer.write_file = second_fails_once
    with pytest.raises(OSError):
        consumer.flush()
    drain(consumer, redis_client)
    assert consumer.stats().written == 200
    assert_same(read_transitions(str(tmp_path)), sort_rows(sent))
