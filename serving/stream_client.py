"""Clients of the fleet bus (streaming control over Redis Streams): ``AsyncStreamClient`` and ``StreamClient``.

They send ``POST /v1/plan`` bodies (``serving.bus`` says how they travel) under the HTTP clients' contract
(``serving.client``): bodies carry ``request_id``, ``t`` and ``prev_action`` (``EpisodeSteps``); a timeout or a
5xx reply is retried with the same body and ``request_id`` (the server answers a retry from its record); a 4xx
is final; failures raise ``APIError`` or ``TransportError`` with the same kinds.

An agent's reply stream may hold older replies (a previous run's, a timed-out attempt's) and request ids may
repeat (a caller's own ids), so a client reads it from a cursor: before the agent's first request it takes
the stream's last id in the request's pipeline (Redis runs them in order: the reply comes after it), then
moves it past every entry read. Only a reply naming a request waiting now answers it; the rest are skipped.

``AsyncStreamClient`` serves many agents over two connections: one adds the requests queued meanwhile in one
pipeline; one blocking ``XREAD`` reads the reply streams of the agents with a request waiting or sent within
``LINGER_S`` (an agent at a control rate stays in it). An agent new to that read adds an entry to the
client's own wake stream, which the read also blocks on, so it does not wait for the block to end.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from serving.bus import BusNames, StreamReply, decode_reply
from serving.episodes import ArrayLike, EpisodeSteps
from serving.link import REDIS_SCHEMES, RETRY, APIError, ClientStats, FleetClientError, RetryPolicy, TransportError
from serving.stream_client_sync import READ_COUNT, StreamClient, outcome, request_fields, transport_error

__all__ = ["APIError", "AsyncStreamClient", "ClientStats", "StreamClient", "TransportError"]

LINGER_S = 5.0
"""An agent's reply stream stays in the async client's read this long after its last request."""
BLOCK_MS = 1000
"""Longest block of the async client's reader; wake entries end it early."""
WAKE_TTL_S = 3600
"""The wake stream of a client that ended without ``close`` expires after this long."""
READ_RETRY_S = 0.1
"""The async reader waits this long after a failed read (Redis down) before reading again."""


@dataclass(frozen=True)
class _Add:
    """A request waiting for the sending connection."""

    agent_id: str
    fields: dict[bytes, bytes]
    done: asyncio.Future[None]


class AsyncStreamClient:
    """Plans for many agents of one process through the fleet bus; use ``async with AsyncStreamClient(...)``.

    Args:
        redis_url: the bus, e.g. 'redis://127.0.0.1:6379/0'.
        prefix: the bus's name prefix (``AppConfig.bus_prefix`` of the app that serves it).
        timeout_s, retries, backoff_s, max_backoff_s: as ``serving.link.RetrySettings`` says; its defaults.
        block_ms: the reader's longest block (``BLOCK_MS``).
    """

    def __init__(self, redis_url: str, *, prefix: str = "fleetwm", timeout_s: float = RETRY.timeout_s,
                 retries: int = RETRY.retries, backoff_s: float = RETRY.backoff_s,
                 max_backoff_s: float = RETRY.max_backoff_s, block_ms: int = BLOCK_MS) -> None:
        if block_ms < 1:
            raise ValueError(f"block_ms must be >= 1, got {block_ms}")
        self._p = RetryPolicy(redis_url, None, timeout_s, retries, backoff_s, max_backoff_s, schemes=REDIS_SCHEMES)
        self._names, self._block_ms, self._steps = BusNames(prefix), block_ms, EpisodeSteps()
        self._reply_prefix = self._names.reply("")
        self._wake = f"{prefix}:wake:{uuid.uuid4().hex}"
        self._wake_cursor = b"0-0"
        self._waiting: dict[str, dict[str, asyncio.Future[StreamReply]]] = {}  # agent -> request id -> its reply
        self._cursors: dict[str, bytes] = {}  # agent -> last reply entry id read (or the stream's end at its start)
        self._active: dict[str, float] = {}  # agent -> monotonic time of its last request
        self._reading: set[str] = set()  # the agents of the XREAD under way
        self._reader_error: str | None = None
        self._closed = False
        self._conns: tuple[aredis.Redis, aredis.Redis] | None = None  # (sending, reading)
        self._outbox: asyncio.Queue[_Add] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def stats(self) -> ClientStats:
        return self._p.stats

    async def plan(self, agent_id: str, observation: ArrayLike, *, reward: float | None = None,
                   terminated: bool = False, truncated: bool = False, objective: dict[str, Any] | None = None,
                   deadline_ms: float | None = None, return_trajectory: bool = False, request_id: str | None = None,
                   t: int | None = None, prev_action: ArrayLike | None = None) -> dict[str, Any]:
        """The agent's next action, as ``serving.client.FleetClient.plan`` answers it (the same options)."""
        body = self._steps.body(agent_id, observation, reward=reward, terminated=terminated, truncated=truncated,
                                objective=objective, deadline_ms=deadline_ms, return_trajectory=return_trajectory,
                                request_id=request_id, t=t, prev_action=prev_action)
        try:
            answer = await self.send(body)
        except FleetClientError:
            self._steps.settle([body], None)
            raise
        self._steps.settle([body], [answer])
        return answer

    async def send(self, body: dict[str, Any]) -> dict[str, Any]:
        """The answer to one plan body (``serving.episodes.plan_body``'s); at most one call per agent and
        request id at a time. Raises ``APIError`` (4xx, or 5xx after the retries) or ``TransportError``."""
        agent, rid, fields = request_fields(body)
        waiting = self._waiting.setdefault(agent, {})
        if rid in waiting:
            raise ValueError(f"agent {agent!r} already waits for request {rid!r} through this client")
        self._open()
        waiting[rid] = asyncio.get_running_loop().create_future()
        self._active[agent] = time.monotonic()
        try:
            return await self._p.call("XADD", f" {self._names.requests}", lambda: self._attempt(agent, rid, fields))
        finally:
            del waiting[rid]
            if not waiting:
                self._waiting.pop(agent, None)
            self._active[agent] = time.monotonic()  # it lingers from its last answer

    async def close(self) -> None:
        """Stop reading and sending; calls still waiting raise ``TransportError``."""
        self._closed = True
        closed = TransportError("connection", "the stream client was closed")
        for waiting in self._waiting.values():
            for future in waiting.values():
                _settle(future, closed)
        if self._conns is None:
            return
        (send, read), tasks = self._conns, self._tasks
        self._conns, self._tasks = None, []
        tasks[0].cancel()  # the writer, waiting for requests
        try:  # a wake entry ends the reader's block: redis-py may turn its cancellation into an empty answer
            await send.xadd(self._wake, {b"w": b"1"})
            await send.delete(self._wake)
        except redis.RedisError:
            pass  # Redis is gone: the reader's read fails by itself, and the wake stream expires (WAKE_TTL_S)
        await asyncio.wait(tasks, timeout=self._block_ms / 1000 + self._p.settings.timeout_s)
        await send.aclose()
        await read.aclose()

    async def __aenter__(self) -> AsyncStreamClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _open(self) -> None:
        if self._conns is not None:
            return
        self._closed = False
        url, timeout_s = self._p.url, self._p.settings.timeout_s
        self._conns = (_async_redis(url, f"{self._names.prefix}-client-send", timeout_s),
                       _async_redis(url, f"{self._names.prefix}-client-read", self._block_ms / 1000 + timeout_s))
        self._tasks = [asyncio.create_task(self._write(), name="stream-client-send"),
                       asyncio.create_task(self._read(), name="stream-client-read")]

    async def _attempt(self, agent: str, rid: str, fields: dict[bytes, bytes]) -> tuple[int, Any]:
        """One attempt: add the request (unless a late reply to an earlier attempt is in) and wait for its reply."""
        waiting = self._waiting[agent]
        timeout_s = self._p.settings.timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                if not waiting[rid].done():
                    await self._queue(agent, fields)
                reply = await asyncio.shield(waiting[rid])
        except TimeoutError:
            reader = self._tasks[1] if self._tasks else None
            if reader is not None and reader.done() and not reader.cancelled():
                raise TransportError("connection", f"the reply reader stopped: {reader.exception()!r}") from None
            if self._reader_error is not None:
                raise TransportError("connection", f"reading replies: {self._reader_error}") from None
            raise TransportError("timeout", f"no reply within {timeout_s:g} s") from None
        if reply.status >= 500:  # retried: the next attempt waits for a new reply
            waiting[rid] = asyncio.get_running_loop().create_future()
        return outcome(reply)

    async def _queue(self, agent: str, fields: dict[bytes, bytes]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.put_nowait(_Add(agent, fields, done))
        await done

    async def _write(self) -> None:
        """The sending connection's loop: the requests queued meanwhile go in one pipeline (one round trip)."""
        while not self._closed:
            batch = [await self._outbox.get()]
            while not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            try:
                await self._add(batch)
            except Exception as err:  # noqa: BLE001 - handed to every caller of the batch, none is dropped
                error = transport_error(err) if isinstance(err, redis.RedisError) else err
                for item in batch:
                    _settle(item.done, error)
            else:
                for item in batch:
                    _settle(item.done, None)

    async def _add(self, batch: list[_Add]) -> None:
        send = self._conns[0]  # type: ignore[index]
        new = list(dict.fromkeys(item.agent_id for item in batch if item.agent_id not in self._cursors))
        pipe = send.pipeline(transaction=False)
        for agent in new:  # before its request: where the agent's replies start
            pipe.xrevrange(self._names.reply(agent), count=1)
        for item in batch:
            pipe.xadd(self._names.requests, item.fields)
        found = await pipe.execute()
        for agent, last in zip(new, found):
            self._cursors.setdefault(agent, last[0][0] if last else b"0-0")
        if any(item.agent_id not in self._reading for item in batch):  # the blocked XREAD lacks its reply stream
            await send.pipeline(transaction=False).xadd(self._wake, {b"w": b"1"}, maxlen=1).expire(
                self._wake, WAKE_TTL_S).execute()

    async def _read(self) -> None:
        """The reading connection's loop: one blocking XREAD over the wake stream and the agents' reply streams."""
        read = self._conns[1]  # type: ignore[index]
        while not self._closed:  # redis-py may turn the cancellation of a blocked read into an empty answer
            streams = self._streams()
            try:
                got = await read.xread(streams, count=READ_COUNT, block=self._block_ms)
            except redis.RedisError as err:  # the waiting calls time out and retry; their error says this
                self._reader_error = f"{type(err).__name__}: {err}"
                await asyncio.sleep(READ_RETRY_S)
                continue
            self._reader_error = None
            self._deliver(got or [])

    def _streams(self) -> dict[str, bytes]:
        """The next XREAD's streams and cursors; ``_reading`` is its agents (set here, with no await before the
        XREAD is sent, so a sender that finds its agent missing can rely on its wake entry being read)."""
        now = time.monotonic()
        for agent in [a for a, t in self._active.items() if now - t > LINGER_S and a not in self._waiting]:
            del self._active[agent]
        self._reading = {agent for agent in self._active if agent in self._cursors}
        return {self._wake: self._wake_cursor} | {self._names.reply(a): self._cursors[a] for a in self._reading}

    def _deliver(self, got: list[Any]) -> None:
        """Move the cursors past what was read, and answer the waiting requests it replies to."""
        for name, entries in got:
            if not entries:
                continue
            name = name.decode()
            if name == self._wake:
                self._wake_cursor = entries[-1][0]
                continue
            agent = name[len(self._reply_prefix):]
            self._cursors[agent] = entries[-1][0]
            waiting = self._waiting.get(agent, {})
            for _, fields in entries if waiting else ():
                try:
                    reply = decode_reply(fields)
                except ValueError:
                    continue  # not a fleetwm reply: nothing waits for it
                future = waiting.get(reply.request_id)  # None: an old or unknown request's reply
                if future is not None and not future.done():
                    future.set_result(reply)


def _settle(future: asyncio.Future[Any], error: BaseException | None) -> None:
    """Resolve ``future`` unless its waiter gave up (timed out or cancelled) already."""
    if not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _async_redis(url: str, name: str, socket_timeout_s: float) -> aredis.Redis:
    """One connection, no retries of its own: ``RetryPolicy`` retries and counts every attempt."""
    return aredis.Redis.from_url(url, single_connection_client=True, client_name=name,
                                 socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
                                 retry=AsyncRetry(NoBackoff(), 0))
