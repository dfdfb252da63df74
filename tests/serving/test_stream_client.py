"""The stream clients against a real Redis and a test peer: a consumer that reads the request stream with
XREADGROUP and replies with ``serving.bus.encode_reply`` as each test scripts (the fleet endpoint's consumer
is tested end to end with the app). Many agents at once, retries with the same request id, final 4xx,
an agent joining while the reader blocks, old and stray replies skipped."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import threading
import time
from collections import Counter
from typing import Any, Callable

import pytest
import redis

from actors.ports import free_port
from serving.bus import REPLY_MAXLEN, BusNames, StreamReply, decode_request, encode_reply
from serving.link import RETRY, APIError, TransportError
from serving.schema import PlanRequest
from serving.stream_client import AsyncStreamClient, StreamClient
from tests.redis_fixtures import redis_client, redis_server  # noqa: F401

OBS = [0.5, -0.5, 0.0, 0.0, -1.0, 1.0]
Answer = Callable[[int, PlanRequest], list[StreamReply]]
"""(delivery number of this request id, the request) -> the replies to add, in order (none: no answer)."""


def answer_of(request: PlanRequest) -> dict[str, Any]:
    """The peer's answer: the action says which step of how long an observation it answers."""
    return {"action": [float(request.t or 0), float(len(request.observation))], "model_version": "peer",
            "plan_id": f"{request.agent_id}/{request.t}", "disagreement": 0.0, "fallback": False,
            "fallback_reason": None, "replayed": False}


def ok(_: int, request: PlanRequest) -> list[StreamReply]:
    return [StreamReply(request.request_id, 200, answer_of(request))]  # type: ignore[arg-type]


class StreamPeer:
    """A thread reading the bus's request stream in the plan group and replying as ``answer`` says.

    ``bodies`` holds every delivered request body as sent (JSON), ``deliveries`` counts them per request id.
    """

    def __init__(self, url: str, answer: Answer = ok, prefix: str = "fleetwm") -> None:
        self.names, self.answer = BusNames(prefix), answer
        self.redis = redis.Redis.from_url(url, socket_timeout=10)
        self.bodies: list[dict[str, Any]] = []
        self.deliveries: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StreamPeer:
        self.redis.xgroup_create(self.names.requests, self.names.plan_group, id="0", mkstream=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self.redis.close()

    def _run(self) -> None:
        stream, group = self.names.requests, self.names.plan_group
        while not self._stop.is_set():
            for _, entries in self.redis.xreadgroup(group, "peer", {stream: ">"}, count=100, block=20) or ():
                for entry_id, fields in entries:
                    request = decode_request(entry_id, fields)
                    self.bodies.append(json.loads(fields[b"v"]))
                    self.deliveries[request.request_id] += 1  # type: ignore[index]
                    for reply in self.answer(self.deliveries[request.request_id], request):  # type: ignore[index]
                        self.redis.xadd(self.names.reply(request.agent_id),
                                        encode_reply(reply.request_id, reply.status, reply.body),
                                        maxlen=REPLY_MAXLEN, approximate=True)
                    self.redis.xack(stream, group, entry_id)


@pytest.fixture()
def url(redis_server, redis_client) -> str:  # noqa: F811 - an emptied database per test
    return redis_server.url


def _names(client: redis.Redis) -> Counter[str]:
    return Counter(c["name"] for c in client.client_list() if c["name"].startswith("fleetwm-client"))


def test_many_agents_share_one_sending_and_one_reading_connection(url, redis_client) -> None:  # noqa: F811
    async def agent(client: AsyncStreamClient, i: int) -> list[dict[str, Any]]:
        return [await client.plan(f"a{i:02d}", OBS[: 2 + i % 5]) for _ in range(3)]

    async def go() -> tuple[list[list[dict[str, Any]]], Counter[str]]:
        async with AsyncStreamClient(url, timeout_s=5.0) as client:
            answers = await asyncio.gather(*(agent(client, i) for i in range(30)))
            return answers, _names(redis_client)

    with StreamPeer(url) as peer:
        answers, connections = asyncio.run(go())
    assert connections == {"fleetwm-client-send": 1, "fleetwm-client-read": 1}
    for i, steps in enumerate(answers):
        assert [a["plan_id"] for a in steps] == [f"a{i:02d}/{t}" for t in range(3)]
        assert all(a["action"][1] == 2 + i % 5 for a in steps)  # each agent got its own answers
    by_agent = {}
    for body in peer.bodies:
        by_agent.setdefault(body["agent_id"], []).append(body)
    assert len(by_agent) == 30 and all(len(b) == 3 for b in by_agent.values())
    # The second step reports the first answer's action as what the agent executed.
    assert all(b[1]["t"] == 1 and b[1]["prev_action"] == [0.0, float(len(b[0]["observation"]))]
               for b in by_agent.values())
    assert _names(redis_client) == {} and not list(redis_client.scan_iter("fleetwm:wake:*"))  # closed, cleaned


def _skip_first(n: int, request: PlanRequest) -> list[StreamReply]:
    return ok(n, request) if n > 1 else []


def _run(kind: str, url: str, call: Callable[[Any], Any], **settings: Any) -> Any:
    """``call(client)`` on a sync or async client with fast retries; returns (result or exception, stats)."""
    settings = {"timeout_s": 0.3, "retries": 2, "backoff_s": 0.01, "max_backoff_s": 0.02} | settings
    if kind == "sync":
        with StreamClient(url, **settings) as client:
            try:
                return call(client), client.stats
            except Exception as err:  # noqa: BLE001 - the test asserts on it
                return err, client.stats

    async def go() -> Any:
        async with AsyncStreamClient(url, **settings) as client:
            try:
                return await call(client), client.stats
            except Exception as err:  # noqa: BLE001 - the test asserts on it
                return err, client.stats

    return asyncio.run(go())


KINDS = ["sync", "async"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_timed_out_request_is_resent_with_the_same_body_and_answered(kind, url) -> None:
    with StreamPeer(url, _skip_first) as peer:
        answer, stats = _run(kind, url, lambda c: c.plan("slow", OBS, request_id="step-0"))
    assert answer["plan_id"] == "slow/0" and stats.retries == 1 and stats.failures == 0
    assert peer.deliveries == {"step-0": 2} and peer.bodies[0] == peer.bodies[1]


@pytest.mark.parametrize("kind", KINDS)
def test_a_503_is_retried_and_a_422_is_final(kind, url) -> None:
    def answer(n: int, request: PlanRequest) -> list[StreamReply]:
        if request.agent_id == "bad":
            return [StreamReply(request.request_id, 422, {"error": "observation: expected 6 numbers, got 2"})]
        return ok(n, request) if n > 1 else [StreamReply(request.request_id, 503, {"error": "planning failed"})]

    with StreamPeer(url, answer) as peer:
        answer_503, stats = _run(kind, url, lambda c: c.send({"agent_id": "flaky", "observation": OBS}))
        err, stats_422 = _run(kind, url, lambda c: c.plan("bad", OBS[:2]))
    assert answer_503["plan_id"] == "flaky/None" and stats.retries == 1
    assert isinstance(err, APIError) and err.status == 422 and err.kind == "http_422"
    assert err.message == "observation: expected 6 numbers, got 2" and stats_422.retries == 0
    assert sorted(peer.deliveries.values()) == [1, 2]  # the 422 was sent once


@pytest.mark.parametrize("kind", KINDS)
def test_old_replies_and_replies_to_other_requests_are_skipped(kind, url, redis_client) -> None:  # noqa: F811
    names = BusNames()
    stale = answer_of(PlanRequest(agent_id="old", observation=[9.0], t=9)) | {"plan_id": "stale"}
    redis_client.xadd(names.reply("old"), encode_reply("r-1", 200, stale))  # a previous run's reply to "r-1"

    def answer(n: int, request: PlanRequest) -> list[StreamReply]:  # a stray reply first, then the answer
        return [StreamReply("someone-else", 200, stale), *ok(n, request)]

    with StreamPeer(url, answer):
        answer_1, _ = _run(kind, url, lambda c: c.plan("old", OBS, request_id="r-1"), timeout_s=5.0)
    assert answer_1["plan_id"] == "old/0"


def test_an_agent_joining_while_the_reader_blocks_is_answered_at_once(url) -> None:
    async def go() -> tuple[float, float]:
        client = AsyncStreamClient(url, timeout_s=5.0, retries=0, block_ms=30_000)
        await client.plan("first", OBS)
        await asyncio.sleep(0.3)  # the reader now blocks on first's replies (and its wake stream)
        start = time.perf_counter()
        await client.plan("late", OBS)
        joined = time.perf_counter()
        await client.close()  # it ends the block too
        return joined - start, time.perf_counter() - joined

    with StreamPeer(url):
        late_s, close_s = asyncio.run(go())
    assert late_s < 1.0 and close_s < 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_no_redis_fails_after_the_retries_with_a_connection_error(kind) -> None:
    err, stats = _run(kind, f"redis://127.0.0.1:{free_port()}/0", lambda c: c.plan("a", OBS), retries=1)
    assert isinstance(err, TransportError) and err.kind == "connection" and "no answer after 2 attempts" in str(err)
    assert stats.attempts == 2 and stats.failures == 1


def test_ids_the_server_could_not_reply_to_and_wrong_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="url must start with redis://"):
        StreamClient("http://127.0.0.1:6379")
    with StreamClient("redis://127.0.0.1:1/0") as client:
        with pytest.raises(ValueError, match="agent_id must match"):
            client.send({"agent_id": "no spaces", "observation": OBS})
        with pytest.raises(ValueError, match="request_id must match"):
            client.plan("a", OBS, request_id="a b")


def test_the_stream_clients_share_the_http_clients_retry_defaults() -> None:
    expected = dataclasses.asdict(RETRY)
    for kind in (StreamClient, AsyncStreamClient):
        params = inspect.signature(kind).parameters
        assert {name: params[name].default for name in expected} == expected, kind.__name__


def test_one_call_per_agent_and_request_id_at_a_time(url) -> None:
    async def go() -> None:
        async with AsyncStreamClient(url, timeout_s=0.5, retries=0) as client:
            body = {"agent_id": "a", "observation": OBS, "request_id": "r-1"}
            first = asyncio.create_task(client.send(body))
            await asyncio.sleep(0.05)
            with pytest.raises(ValueError, match="agent 'a' already waits for request 'r-1'"):
                await client.send(body)
            assert (await first)["plan_id"] == "a/None"

    def slow(n: int, request: PlanRequest) -> list[StreamReply]:
        time.sleep(0.2)  # the second call comes while the first waits
        return ok(n, request)

    with StreamPeer(url, slow):
        asyncio.run(go())
