"""One batch of plan request entries read from the fleet bus, answered (``serving.consumer_loop`` reads them).

A batch:

1. decodes each entry (``serving.bus.decode_request``) and checks it against the served model (the HTTP
   path's ``serving.served_checks.check_request``);
2. submits the good requests to the engine, each arrived at its entry id's millisecond (Redis's clock, so
   the time it queued in Redis counts against its deadline); the engine's cycles merge the batches in
   flight into one planner call; a request with ``explain`` gets its decision's explanation in its answer
   (``serving.explain``: the bus's ``/v1/explain``), and the batch's replies wait for it;
3. sends, in one pipeline, every reply (``XADD`` to the agent's reply stream, ``MAXLEN ~ REPLY_MAXLEN``,
   then ``EXPIRE REPLY_TTL_S``), and for each bad entry its dead letter (with the reason), a 422 reply
   when its agent can be read, and its ``XACK``;
4. waits for ``engine.settled(since)`` (the state writes and telemetry submitted since the batch went
   to the engine are durable), then acknowledges the rest. When a write failed, the entries stay
   pending and are claimed again.

Delivery is at least once: an entry whose acknowledgement was lost is answered again, with the same
``request_id`` and, once its record was written, the same answer (``replayed``); a client keeps the first.
Replies go out once the agents' new records are sent to the shards (after their transitions), before they
are durable: the acknowledgement waits for that, the agent does not. An agent's next request, through any
replica, reads its new record; a copy of a request read by another replica before its record lands (an
agent resending without waiting for its timeout) is planned again: a second answer the client ignores,
and a transition the logs keep once.

Ray-free. Shapes: ``N`` entries in a batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

from actors import streams
from actors.records import PlanAnswer, Rejected
from serving.bus import FIELD, REPLY_MAXLEN, REPLY_TTL_S, BadMessage, BusNames, decode_request, encode_reply
from serving.schema import REQUEST_ID_PATTERN, PlanRequest, public_body
from worldmodel.data.writer import one_line

logger = logging.getLogger("ray.serve")

Answer = PlanAnswer | Rejected
Entry = tuple[bytes, dict[bytes, bytes]]
"""A stream entry as redis-py reads it: its id and its fields."""
Check = Callable[[PlanRequest], Awaitable[str | None]]
"""The served model's check of a request: the problem (dead-lettered, 422) or None. Any error it raises (the
model's spec cannot be fetched) refuses the request with a retryable 503 naming it."""
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
EXPIRE_EVERY_S = 60.0
"""A reply stream's expiry is renewed at most this often per consumer: it expires between ``REPLY_TTL_S`` less
this and ``REPLY_TTL_S`` after its last reply."""
MAX_AGENTS_TRACKED = 100_000


class Engine(Protocol):
    """What a batch needs of ``serving.engine.PlanEngine``."""

    writes: Any
    """Its ``EngineWrites``: ``writes.submitted`` numbers the writes submitted so far."""

    async def submit(self, requests: list[PlanRequest], arrived: list[float]) -> list[Answer]: ...

    async def explained(self, req: PlanRequest, answer: Answer) -> Answer: ...

    async def settled(self, since: int | None = None) -> bool: ...

    async def until_idle(self) -> None: ...


@dataclass(frozen=True)
class _Bad:
    """An entry that cannot be planned: dead-lettered, and answered 422 when its agent is known."""

    entry_id: bytes
    reason: str
    agent_id: str | None
    request_id: str
    payload: bytes


class BatchAnswerer:
    """Answers batches of request entries for one consumer; its counts go into ``counts``."""

    def __init__(self, redis: Any, names: BusNames, engine: Engine, check: Check, counts: Counter[str],
                 metrics: Any | None = None) -> None:
        """``redis``: a ``redis.asyncio.Redis``; ``metrics``: a ``ServingMetrics`` (None: nothing exported)."""
        self.redis, self.names, self.engine, self.check = redis, names, engine, check
        self.counts, self.metrics = counts, metrics
        self._expiry_set: dict[str, float] = {}  # agent -> when this consumer last set its reply stream's expiry
        self.offset_s = 0.0
        """Redis's clock minus this host's (the consumer's housekeeping measures it)."""

    async def handle(self, entries: list[Entry]) -> None:
        """Answer N entries: replies and dead letters in one pipeline, then the acknowledgements.

        Raises:
            redis.RedisError, OSError: Redis failed; what was not acknowledged is claimed again.
        """
        good, refusals, bad = await self._sort(entries)
        since = self.engine.writes.submitted  # batches in flight share the engine: ask about this one's writes
        answers = await self._answers(good, refusals)
        pipe = self.redis.pipeline(transaction=False)
        for (_, req), answer in zip(good, answers):
            if isinstance(answer, PlanAnswer):
                self._reply(pipe, req.agent_id, req.request_id or "", 200, public_body(answer))
            else:
                self._reply(pipe, req.agent_id, req.request_id or "", answer.status, answer.to_dict())
        for entry in bad:
            if entry.agent_id is not None:
                self._reply(pipe, entry.agent_id, entry.request_id, 422, {"error": entry.reason})
        streams.dead_letter(pipe, self.names.requests, [streams.BadEntry(b.entry_id, b.reason, b.payload)
                                                        for b in bad], self.names.request_dead_letters)
        if bad:
            pipe.xack(self.names.requests, self.names.plan_group, *[b.entry_id for b in bad])
        await pipe.execute()
        self._observe(entries, answers, len(bad))
        if good and not await self.engine.settled(since):
            self.counts["unsettled"] += 1  # still pending: claimed again, then answered from the record
            return
        if good:
            await self.redis.xack(self.names.requests, self.names.plan_group, *[entry_id for entry_id, _ in good])

    async def _sort(self, entries: list[Entry]) -> tuple[list[tuple[bytes, PlanRequest]], dict[int, Rejected],
                                                         list[_Bad]]:
        """The readable requests (with the refusals among them, by index) and the entries that cannot be planned."""
        good: list[tuple[bytes, PlanRequest]] = []
        refusals: dict[int, Rejected] = {}
        bad: list[_Bad] = []
        for entry_id, fields in entries:
            payload = (fields or {}).get(FIELD) or b""
            try:
                req = decode_request(entry_id, fields)
            except BadMessage as err:
                bad.append(_Bad(entry_id, err.reason, err.agent_id, _request_id(payload, entry_id), payload))
                continue
            try:
                problem = await self.check(req)
            except Exception as err:  # the model's spec cannot be fetched: retryable, as on HTTP
                refusals[len(good)] = Rejected(503, one_line(err))
                problem = None
            if problem is not None:
                bad.append(_Bad(entry_id, problem, req.agent_id, req.request_id or "", payload))
            else:
                good.append((entry_id, req))
        return good, refusals, bad

    async def _answers(self, good: list[tuple[bytes, PlanRequest]], refusals: dict[int, Rejected]) -> list[Answer]:
        """The engine's answers to the requests not refused already; a failed planning is a retryable 503."""
        todo = [i for i in range(len(good)) if i not in refusals]
        answers: list[Answer | None] = [refusals.get(i) for i in range(len(good))]
        if todo:
            try:
                planned = await self.engine.submit([good[i][1] for i in todo],
                                                   [self.arrived(good[i][0]) for i in todo])
            except Exception as err:  # every request of the batch is refused; the consumer goes on
                logger.exception("stream consumer: plan batch failed")
                error = f"planning failed, retry: {type(err).__name__}: {one_line(err)[:200]}"
                planned = [Rejected(503, error)] * len(todo)
            for i, answer in zip(todo, planned):
                answers[i] = answer
        asked = [i for i in todo if good[i][1].proposals is not None]  # requests with `explain`
        explained = await asyncio.gather(*(self.engine.explained(good[i][1], answers[i])  # type: ignore[arg-type]
                                           for i in asked))
        for i, answer in zip(asked, explained):
            answers[i] = answer
        return answers  # type: ignore[return-value]

    def _reply(self, pipe: Any, agent_id: str, request_id: str, status: int, body: dict[str, Any]) -> None:
        stream = self.names.reply(agent_id)
        pipe.xadd(stream, encode_reply(request_id, status, body), maxlen=REPLY_MAXLEN, approximate=True)
        now = time.monotonic()
        if now - self._expiry_set.get(agent_id, -REPLY_TTL_S) >= EXPIRE_EVERY_S:  # not one EXPIRE per reply
            pipe.expire(stream, REPLY_TTL_S)
            self._expiry_set[agent_id] = now
            if len(self._expiry_set) > 4 * MAX_AGENTS_TRACKED:
                self._expiry_set = dict(list(self._expiry_set.items())[-MAX_AGENTS_TRACKED:])

    def arrived(self, entry_id: bytes) -> float:
        """When the entry was added, on this host's monotonic clock (its id's ms are Redis's wall clock)."""
        queued_s = time.time() + self.offset_s - entry_ms(entry_id) / 1000
        return time.monotonic() - max(queued_s, 0.0)

    def _observe(self, entries: list[Entry], answers: list[Answer], bad: int) -> None:
        ok = [a for a in answers if isinstance(a, PlanAnswer)]
        self.counts.update(answered=len(ok), replayed=sum(a.replayed for a in ok), rejected=len(answers) - len(ok),
                           dead_letters=bad, batches=1)
        if self.metrics is None:
            return
        if bad:
            self.metrics.bus_dead_letters.inc(bad)
        now_ms = (time.time() + self.offset_s) * 1000
        for entry_id, _ in entries:
            self.metrics.bus_latency.observe(max(now_ms - entry_ms(entry_id), 0.0) / 1000)


def entry_ms(entry_id: bytes | str) -> int:
    """The milliseconds part of a stream entry id (``b"ms-seq"``): when Redis added it."""
    return streams.id_key(entry_id)[0]


def _request_id(payload: bytes, entry_id: bytes) -> str:
    """The ``request_id`` of an entry that could not be decoded, when it has a valid one; else the entry id."""
    try:
        value = json.loads(payload).get("request_id")
    except (ValueError, AttributeError):
        value = None
    return value if isinstance(value, str) and _REQUEST_ID.fullmatch(value) else entry_id.decode()
