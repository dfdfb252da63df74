"""The telemetry stream's codec, producer, dead letters and trimming, against a real redis-server."""

from __future__ import annotations

import dataclasses

import numpy as np

from actors import streams
from tests.redis_fixtures import redis_client, redis_server  # noqa: F401 (fixtures)
from worldmodel.data import Transitions

S, A = 6, 2


def make_batch(b: int, seed: int = 0, agents: int = 3) -> Transitions:
    rng = np.random.default_rng(seed)
    return Transitions.build(
        obs=rng.normal(size=(b, S)), actions=rng.normal(size=(b, A)), rewards=rng.normal(size=b),
        new_obs=rng.normal(size=(b, S)), terminateds=rng.random(b) < 0.3, truncateds=rng.random(b) < 0.3,
        eps_id=[f"eps-{seed}-{i % agents}-ü" for i in range(b)],
        agent_id=[f"car-{i % agents}" for i in range(b)], t=np.arange(b) // agents,
        model_version=np.array(["", "v1"], dtype=object)[np.arange(b) % 2],
        timestamp=np.datetime64("2026-12-06T10:00:00.123456") + np.arange(b).astype("timedelta64[ms]"),
        violations=np.array([1, 0, -1])[np.arange(b) % 3])  # violated, not, not tested


def assert_same(a: Transitions, b: Transitions) -> None:
    for f in dataclasses.fields(Transitions):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.dtype == y.dtype, f.name
        np.testing.assert_array_equal(x, y, err_msg=f.name)


def test_codec_round_trip_is_exact():
    batch = make_batch(40)
    entries = [(f"1-{i}".encode(), {streams.FIELD: p}) for i, p in enumerate(streams.encode_transitions(batch))]
    decoded = streams.decode_entries(entries, None)
    assert decoded.bad == [] and decoded.dims == (S, A) and len(decoded.ids) == 40
    assert_same(decoded.batch, batch)


def test_bad_entries_are_named_and_good_ones_kept():
    good = streams.encode_transitions(make_batch(4))
    nan = streams.encode_transitions(dataclasses.replace(make_batch(1), rewards=np.array([np.nan], np.float32)))
    other_dims = streams.encode_transitions(Transitions.build(
        obs=np.zeros((1, 3)), actions=np.zeros((1, 1)), rewards=[0.0], new_obs=np.zeros((1, 3)),
        terminateds=[False], truncateds=[False], eps_id=["e"], agent_id="a", t=[0]))
    entries = [(b"1-0", {streams.FIELD: good[0]}), (b"1-1", {b"other": b"x"}), (b"1-2", {streams.FIELD: good[1][:-3]}),
               (b"1-3", {streams.FIELD: nan[0]}), (b"1-4", {streams.FIELD: other_dims[0]}),
               (b"1-5", {streams.FIELD: b"\x09" + good[2][1:]}), (b"1-6", {streams.FIELD: good[3]})]
    decoded = streams.decode_entries(entries, None)
    assert decoded.ids == [b"1-0", b"1-6"]
    reasons = {bad.entry_id: bad.reason for bad in decoded.bad}
    assert set(reasons) == {b"1-1", b"1-2", b"1-3", b"1-4", b"1-5"}
    assert "no 'v' field" in reasons[b"1-1"] and "bytes, expected" in reasons[b"1-2"]
    assert "non-finite" in reasons[b"1-3"] and "expected (6, 2)" in reasons[b"1-4"]
    assert "got version 9" in reasons[b"1-5"]


def test_a_site_travels_as_the_scene_and_version_1_entries_read_without_one():
    batch = dataclasses.replace(make_batch(3), scene=np.array(["site-a", "", "site-b"], dtype=object))
    decoded = streams.decode_entries([(b"1-0", {streams.FIELD: p}) for p in streams.encode_transitions(batch)], None)
    assert decoded.batch is not None and decoded.batch.scene.tolist() == ["site-a", "", "site-b"]
    old = streams._HEADERS[1]  # a version 1 entry: its header without the scene's length, no scene bytes
    new = streams.encode_transitions(batch)[0]
    head = list(streams._HEADER.unpack_from(new))
    body = new[streams._HEADER.size:len(new) - head[-1]]
    v1 = old.pack(1, *head[1:-1]) + body
    decoded = streams.decode_entries([(b"1-0", {streams.FIELD: v1})], None)
    assert decoded.bad == [] and decoded.batch is not None and decoded.batch.scene.tolist() == [""]
    np.testing.assert_array_equal(decoded.batch.obs, batch.obs[:1])


def test_append_sends_a_batch_in_order_and_reads_back(redis_client):
    batch = make_batch(25, seed=3)
    ids = streams.append_transitions(redis_client, batch, stream="s")
    assert len(ids) == 25 and redis_client.xlen("s") == 25
    entries = redis_client.xrange("s")
    assert [e[0] for e in entries] == ids
    assert_same(streams.decode_entries(entries, (S, A)).batch, batch)
    assert streams.append_transitions(redis_client, batch.select(np.zeros(25, bool)), stream="s") == []


def test_trimming_keeps_every_entry_a_group_still_needs(redis_client):
    streams.append_transitions(redis_client, make_batch(1000), stream="s")
    assert streams.trim_acknowledged(redis_client, "s") == 0  # no group yet: nobody has read it
    redis_client.xgroup_create("s", "g", id="0")
    read = redis_client.xreadgroup("g", "c", {"s": ">"}, count=600)[0][1]
    redis_client.xack("s", "g", *[entry_id for entry_id, _ in read[:500]])
    streams.trim_acknowledged(redis_client, "s")
    oldest = redis_client.xrange("s", count=1)[0][0]
    # Approximate trimming removes whole nodes only; never the pending entry 500 or anything after it.
    assert streams.id_key(oldest) <= streams.id_key(read[500][0]) and redis_client.xlen("s") >= 500
    redis_client.xack("s", "g", *[entry_id for entry_id, _ in read[500:]])
    streams.trim_acknowledged(redis_client, "s")
    assert streams.id_key(redis_client.xrange("s", count=1)[0][0]) <= streams.id_key(
        redis_client.xrange("s", min=b"(" + read[-1][0], count=1)[0][0])
    assert redis_client.xlen("s") >= 400


def test_trimming_keeps_up_with_a_large_flush(redis_client):
    streams.append_transitions(redis_client, make_batch(25_000), stream="s")
    redis_client.xgroup_create("s", "g", id="0")
    read = redis_client.xreadgroup("g", "c", {"s": ">"})[0][1]
    redis_client.xack("s", "g", *[entry_id for entry_id, _ in read])
    assert streams.trim_acknowledged(redis_client, "s") > 24_000 and redis_client.xlen("s") < 200


def test_dead_letters_carry_the_reason(redis_client):
    bad = [streams.BadEntry(b"5-1", "not a transition", b"\x00")]
    pipe = redis_client.pipeline(transaction=False)
    streams.dead_letter(pipe, "s", bad, stream="dead")
    pipe.execute()
    (_, fields), = redis_client.xrange("dead")
    assert fields == {b"stream": b"s", b"id": b"5-1", b"reason": b"not a transition", b"payload": b"\x00"}
