"""The fleet bus's stream consumer without Ray: a real Redis, a toy engine with known answers.

Answers reach the right agent with the right request_id, bad entries are dead-lettered and never stop
the loop, nothing is acknowledged before it is durable, a dead consumer's entries are claimed and the
consumer deleted, requests in flight stay bounded, the request stream is trimmed, a Redis restart is
survived.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from types import SimpleNamespace
from typing import Any, Awaitable, Callable

import pytest
import redis

from actors.records import PlanAnswer, Rejected
from actors.redis_server import INSTALL_HINT, RedisServer
from serving.bus import BusNames, StreamReply, decode_reply, encode_request
from serving.consumer_loop import ConsumerLoop, LoopSettings
from serving.metrics import ServingMetrics
from serving.schema import PlanRequest
from serving.served_checks import check_request
from tests.redis_fixtures import redis_client, redis_server  # noqa: F401

SPEC = {"model_version": "toy", "env_id": "Nav2D-v0", "obs_dim": 6, "act_dim": 2, "objectives": ["learned"],
        "zones": True}
FAST = LoopSettings(read_count=8, claim_idle_ms=200, block_ms=50)


class ToyEngine:
    """Plans action [t, 0] for each request; a repeated (agent, request_id) is answered again, replayed."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str | None], PlanAnswer] = {}
        self.writes = SimpleNamespace(submitted=0)
        self.asked: list[int | None] = []
        self.arrived: list[float] = []
        self.planned = 0
        self.durable = True
        self.error: Exception | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def until_idle(self) -> None:
        return None

    async def submit(self, requests: list[PlanRequest], arrived: list[float]) -> list[PlanAnswer | Rejected]:
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        self.arrived += arrived
        out = []
        self.writes.submitted += 1
        for r in requests:
            key = (r.agent_id, r.request_id)
            if key not in self.answers:
                self.planned += 1
                self.answers[key] = PlanAnswer(action=[float(r.t or 0), 0.0], model_version="toy",
                                               plan_id=f"p{self.planned}", disagreement=0.0, fallback=False,
                                               fallback_reason=None)
                out.append(self.answers[key])
            else:
                out.append(self.answers[key].replay())
        return out

    async def settled(self, since: int | None = None) -> bool:
        self.asked.append(since)
        return self.durable


async def served(req: PlanRequest) -> str | None:
    return check_request(req, SPEC)


def _body(agent: str, t: int = 0, **extra: Any) -> dict[str, Any]:
    return {"agent_id": agent, "observation": [0.1] * 6, "t": t, "request_id": f"{agent}-{t}", **extra}


def _replies(client: redis.Redis, names: BusNames, agent: str) -> list[StreamReply]:
    return [decode_reply(fields) for _, fields in client.xrange(names.reply(agent))]


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _run(url: str, test: Callable[[BusNames, ToyEngine, ConsumerLoop], Awaitable[None]],
         settings: LoopSettings = FAST, check: Any = served, before: Callable[[BusNames], None] | None = None,
         metrics: Any = None) -> None:
    """Run ``test`` beside a started consumer of a fresh bus prefix (``before`` runs first), then stop it."""
    async def main() -> None:
        names, engine = BusNames(f"t{uuid.uuid4().hex[:8]}"), ToyEngine()
        if before is not None:
            before(names)
        loop = ConsumerLoop(url, names, "c1", engine, check, settings, metrics)
        loop.start()
        try:
            await test(names, engine, loop)
        finally:
            await loop.stop()
    asyncio.run(main())


def test_each_agent_gets_its_answer_under_its_request_id_and_entries_are_acknowledged(
        redis_server, redis_client) -> None:  # noqa: F811
    def pending(names: BusNames) -> int:
        return redis_client.xpending(names.requests, names.plan_group)["pending"]

    async def test(names: BusNames, engine: ToyEngine, loop: ConsumerLoop) -> None:
        old = int(redis_client.time()[0] * 1000) - 500  # an entry added 0.5 s ago: its time counts
        redis_client.xadd(names.requests, encode_request(_body("a0", 3)), id=f"{old}-0")
        for agent in ("a1", "a2", "a3"):
            redis_client.xadd(names.requests, encode_request(_body(agent, 1)))
        redis_client.xadd(names.requests, encode_request({"agent_id": "a4", "observation": [0.0] * 6}))
        await _until(lambda: all(_replies(redis_client, names, a) for a in ("a0", "a1", "a2", "a3", "a4")))
        await _until(lambda: pending(names) == 0)
        (a0,) = _replies(redis_client, names, "a0")
        assert a0.ok and a0.request_id == "a0-3" and a0.body["action"] == [3.0, 0.0] and not a0.body["replayed"]
        assert [r.request_id for r in _replies(redis_client, names, "a2")] == ["a2-1"]
        (a4,) = _replies(redis_client, names, "a4")  # no request_id: its entry id is its request_id
        assert a4.request_id == redis_client.xrange(names.requests)[-1][0].decode()
        assert 0.4 < time.monotonic() - engine.arrived[0] < 30  # queued in Redis counts against the deadline
        assert redis_client.ttl(names.reply("a1")) > 0  # reply streams expire
        assert None not in engine.asked  # each batch asks about its own writes only

    _run(redis_server.url, test)


def test_bad_entries_are_dead_lettered_with_the_reason_answered_422_and_never_stop_the_loop(
        redis_server, redis_client) -> None:  # noqa: F811
    bad = {"no-json": b"{not json", "short": json.dumps(_body("short") | {"observation": [0.1] * 5}).encode(),
           "nan": b'{"agent_id": "nan", "observation": [NaN, 0, 0, 0, 0, 0]}',
           "speed": json.dumps(_body("speed", objective={"name": "speed"})).encode(),
           "goal": json.dumps(_body("goal", objective={"name": "goal"})).encode()}

    async def test(names: BusNames, engine: ToyEngine, loop: ConsumerLoop) -> None:
        for i in range(3):
            redis_client.xadd(names.requests, encode_request(_body("good", i)))
            for payload in bad.values():
                redis_client.xadd(names.requests, {b"v": payload})
        redis_client.xadd(names.requests, {b"other": b"field"})
        await _until(lambda: loop.stats().dead_letters == 16 and len(_replies(redis_client, names, "good")) == 3)
        letters = [fields for _, fields in redis_client.xrange(names.request_dead_letters)]
        reasons = {f[b"reason"].decode() for f in letters}
        assert any(r.startswith("not JSON") for r in reasons) and "entry has no 'v' field" in reasons
        assert "observation: has 5 values, model toy (Nav2D-v0) expects 6" in reasons
        assert any(r.startswith("observation.0: ") for r in reasons)  # NaN
        assert any(r.startswith("objective.name: ") and "'learned' or 'goal'" in r for r in reasons)
        assert any("'goal' is not served for Nav2D-v0" in r for r in reasons)
        for agent in ("short", "nan", "speed", "goal"):
            replies = _replies(redis_client, names, agent)
            assert len(replies) == 3 and {r.status for r in replies} == {422} and replies[0].body["error"]
        assert _replies(redis_client, names, "short")[0].request_id == "short-0"
        # batches in flight are answered concurrently: one agent's pipelined requests may be answered out of order
        assert sorted(r.body["action"][0] for r in _replies(redis_client, names, "good")) == [0.0, 1.0, 2.0]
        await _until(lambda: redis_client.xpending(names.requests, names.plan_group)["pending"] == 0)
        stats = loop.stats()
        assert (stats.answered, stats.dead_letters, stats.read, stats.errors) == (3, 16, 19, 0)

    _run(redis_server.url, test)


def test_nothing_is_acknowledged_before_it_is_durable_then_it_is_claimed_and_answered_again(
        redis_server, redis_client) -> None:  # noqa: F811
    async def test(names: BusNames, engine: ToyEngine, loop: ConsumerLoop) -> None:
        engine.durable = False  # the state write failed: the entry stays pending
        redis_client.xadd(names.requests, encode_request(_body("w", 5)))
        await _until(lambda: len(_replies(redis_client, names, "w")) == 1)
        await asyncio.sleep(0.1)
        assert redis_client.xpending(names.requests, names.plan_group)["pending"] == 1
        engine.durable = True  # claimed by this consumer after claim_idle_ms, answered from the "record"
        await _until(lambda: len(_replies(redis_client, names, "w")) == 2)
        await _until(lambda: redis_client.xpending(names.requests, names.plan_group)["pending"] == 0)
        first, again = _replies(redis_client, names, "w")
        assert again.request_id == first.request_id and again.body["replayed"] and engine.planned == 1
        assert again.body["plan_id"] == first.body["plan_id"]
        stats = loop.stats()
        assert stats.unsettled >= 1 and stats.claimed >= 1 and stats.replayed == 1

    _run(redis_server.url, test)


def test_a_dead_consumers_entries_are_claimed_and_answered_and_the_consumer_deleted(
        redis_server, redis_client) -> None:  # noqa: F811
    def dead_consumer(names: BusNames) -> None:
        redis_client.xgroup_create(names.requests, names.plan_group, id="0", mkstream=True)
        for i in range(5):
            redis_client.xadd(names.requests, encode_request(_body(f"d{i}", 1)))
        taken = redis_client.xreadgroup(names.plan_group, "dead", {names.requests: ">"}, count=5)  # and dies
        assert len(taken[0][1]) == 5

    async def test(names: BusNames, engine: ToyEngine, loop: ConsumerLoop) -> None:
        start = time.monotonic()
        await _until(lambda: all(_replies(redis_client, names, f"d{i}") for i in range(5)))
        assert time.monotonic() - start < 2 * FAST.claim_idle_ms / 1000 + 0.5  # idle time + a claim period
        assert loop.stats().claimed == 5
        consumers = lambda: {c["name"] for c in redis_client.xinfo_consumers(names.requests, names.plan_group)}  # noqa
        await _until(lambda: "dead" not in consumers(), timeout_s=FAST.forget_idle_ms / 1000 + 3)

    _run(redis_server.url, test, before=dead_consumer)


def test_a_failed_planning_or_an_unknown_model_is_a_retryable_503_and_the_loop_goes_on(
        redis_server, redis_client) -> None:  # noqa: F811
    spec_ready = asyncio.Event()

    async def check(req: PlanRequest) -> str | None:
        if not spec_ready.is_set() and req.agent_id == "early":
            raise RuntimeError("model spec not available: ConnectionError: planner restarting")
        return await served(req)

    async def test(names: BusNames, engine: ToyEngine, loop: ConsumerLoop) -> None:
        redis_client.xadd(names.requests, encode_request(_body("early")))
        await _until(lambda: bool(_replies(redis_client, names, "early")))
        engine.error = ValueError("planner\nexploded")
        redis_client.xadd(names.requests, encode_request(_body("boom")))
        await _until(lambda: bool(_replies(redis_client, names, "boom")))
        engine.error = None
        redis_client.xadd(names.requests, encode_request(_body("fine")))
        await _until(lambda: bool(_replies(redis_client, names, "fine")))
        (early,), (boom,), (fine,) = (_replies(redis_client, names, a) for a in ("early", "boom", "fine"))
        assert (early.status, early.body) == (503, {"error": "model spec not available: ConnectionError: "
                                                             "planner restarting"})
        assert (boom.status, boom.body) == (503, {"error": "planning failed, retry: ValueError: planner exploded"})
        assert fine.ok and loop.stats().rejected == 2
        await _until(lambda: redis_client.xpending(names.requests, names.plan_group)["pending"] == 0)

    _run(redis_server.url, test, check=check)


def test_requests_in_flight_stay_bounded_and_a_deleted_stream_is_read_again(
        redis_server, redis_client) -> None:  # noqa: F811
    async def test(names: BusNames, engine: ToyEngine, loop: ConsumerLoop) -> None:
        engine.gate.clear()  # planning hangs
        for i in range(40):
            redis_client.xadd(names.requests, encode_request(_body(f"f{i}")))
        await _until(lambda: loop.stats().read == FAST.max_in_flight)
        await asyncio.sleep(0.2)
        assert loop.stats().read == FAST.max_in_flight  # no read while the bound is reached
        engine.gate.set()
        await _until(lambda: loop.stats().answered == 40)
        redis_client.delete(names.requests)  # the group goes with it; the consumer creates it again
        await asyncio.sleep(0.2)
        redis_client.xadd(names.requests, encode_request(_body("after")))
        await _until(lambda: bool(_replies(redis_client, names, "after")))

    _run(redis_server.url, test)


def test_the_request_stream_is_trimmed_below_what_the_group_still_needs(
        redis_server, redis_client) -> None:  # noqa: F811
    async def test(names: BusNames, engine: ToyEngine, loop: ConsumerLoop) -> None:
        for i in range(300):
            redis_client.xadd(names.requests, encode_request(_body(f"r{i % 50}", i // 50)))
        await _until(lambda: loop.stats().answered == 300)
        await _until(lambda: redis_client.xlen(names.requests) < 100, timeout_s=5)  # whole nodes of 100 go
        stats = loop.stats()
        assert (stats.lag, stats.pending) == (0, 0)

    _run(redis_server.url, test)


@pytest.mark.parametrize("read_count, claim_idle_ms", [(1, 1), (256, 1000)])
def test_settings_bound_what_is_in_flight_and_when_consumers_are_forgotten(read_count: int,
                                                                           claim_idle_ms: int) -> None:
    settings = LoopSettings(read_count=read_count, claim_idle_ms=claim_idle_ms)
    assert settings.max_in_flight == 4 * read_count and settings.forget_idle_ms == 10 * claim_idle_ms


def test_a_redis_restart_is_reported_retried_and_loses_no_acknowledgement(tmp_path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip(INSTALL_HINT)
    server = RedisServer(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url, socket_timeout=10)

    async def test(names: BusNames, engine: ToyEngine, loop: ConsumerLoop) -> None:
        client.xadd(names.requests, encode_request(_body("before")))
        await _until(lambda: bool(_replies(client, names, "before")))
        await asyncio.sleep(1.2)  # the acknowledgement reaches the AOF (fsync every second)
        server.kill()
        await _until(lambda: loop.stats().unreachable_s is not None)
        assert loop.stats().last_error.startswith("ConnectionError")
        server.start()
        client.xadd(names.requests, encode_request(_body("after")))
        await _until(lambda: bool(_replies(client, names, "after")), timeout_s=15)  # retried with backoff
        assert len(_replies(client, names, "before")) == 1 and engine.planned == 2  # its ack survived
        assert loop.stats().unreachable_s is None

    try:
        _run(server.url, test)
    finally:
        client.close()
        server.stop()


class _Recorded:
    """A metric that records what it is given."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def inc(self, value: float = 1.0) -> None:
        self.values.append(value)

    observe = set = inc


def test_latency_dead_letters_lag_and_pending_are_exported(redis_server, redis_client) -> None:  # noqa: F811
    metrics = ServingMetrics.__new__(ServingMetrics)  # the real report_bus, on recording metrics
    metrics.bus_lag, metrics.bus_pending, metrics.bus_dead_letters, metrics.bus_latency = \
        (_Recorded() for _ in range(4))

    async def test(names: BusNames, engine: ToyEngine, loop: ConsumerLoop) -> None:
        old = int(redis_client.time()[0] * 1000) - 300
        redis_client.xadd(names.requests, encode_request(_body("m0")), id=f"{old}-0")
        redis_client.xadd(names.requests, {b"v": b"[1, 2"})
        await _until(lambda: bool(metrics.bus_dead_letters.values) and len(metrics.bus_latency.values) == 2)
        await _until(lambda: bool(metrics.bus_pending.values), timeout_s=3)  # the housekeeping, once a second
        assert metrics.bus_dead_letters.values == [1] and max(metrics.bus_latency.values) >= 0.3
        assert metrics.bus_lag.values[-1] == 0 and metrics.bus_pending.values[-1] == 0

    _run(redis_server.url, test, metrics=metrics)
