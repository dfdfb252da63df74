"""One consumer of the fleet bus's plan group: reads plan requests, has them answered, claims, cleans up.

Ray-free: ``serving.stream_consumer.StreamConsumer`` (a Serve deployment) runs one per replica.

Reading: each ``XREADGROUP COUNT read_count BLOCK`` batch is answered by its own task
(``serving.consumer_batch``), so the next read does not wait for its replies and acknowledgements. A read is
issued once the engine has no cycle running (``until_idle``): what arrives during a cycle would wait for it
anyway, and one read then takes all of it, so the Redis round trips (read, replies, acknowledgement) are
paid per cycle rather than per request. Requests read and not yet acknowledged stay below
``LoopSettings.max_in_flight``: a read asks for no more than is left.

Claims: every ``claim_idle_ms / 10``, ``XAUTOCLAIM`` takes entries pending longer than ``claim_idle_ms`` at
any consumer (a dead replica's, or this one's whose batch could not be acknowledged). A consumer with no
pending entries, idle longer than ``10 x claim_idle_ms``, is deleted: one Lua script checks and deletes,
so a consumer that reads meanwhile keeps its entries, and a live one deleted is recreated by its next read.

Housekeeping, once a second: the group's lag and pending count (gauges), trimming the request stream
below what the group still needs (``actors.streams.trim_acknowledged``), and Redis's clock offset.

Redis errors are counted, retried with backoff (0.1 s to ``MAX_BACKOFF_S``), never fatal; a group that
is gone (the stream was deleted) is created again, from the stream's start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import redis
import redis.asyncio as aioredis

from actors import streams
from serving.bus import BusNames
from serving.consumer_batch import BatchAnswerer, Check, Engine, Entry
from worldmodel.data.writer import one_line

logger = logging.getLogger("ray.serve")

HOUSEKEEPING_S = 1.0
"""Seconds between reads of the group's state, trims and clock-offset measurements."""
MAX_BACKOFF_S = 5.0
"""Longest wait between tries while Redis cannot be reached."""
_FORGET = """
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[3] and f['pending'] == 0 and f['idle'] > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    table.insert(removed, f['name'])
  end
end
return removed
"""
"""Deletes the group's consumers (but ARGV[3]) with nothing pending, idle over ARGV[2] ms; returns their names."""


@dataclass(frozen=True)
class LoopSettings:
    """How much a consumer reads and when it claims (``AppConfig``'s ``read_count`` and ``claim_idle_ms``)."""

    read_count: int = 256
    """Entries per read."""
    claim_idle_ms: int = 1000
    """Entries pending this long at a consumer are claimed by another."""
    block_ms: int = 500
    """How long a read waits for entries: also how soon a stop is noticed."""

    @property
    def max_in_flight(self) -> int:
        """Requests read and not yet acknowledged, at most (a read asks for no more than is left)."""
        return 4 * self.read_count

    @property
    def forget_idle_ms(self) -> int:
        """A consumer with nothing pending, idle this long, is deleted."""
        return 10 * self.claim_idle_ms


@dataclass(frozen=True)
class BusStats:
    """One stream consumer's counts since it started, and its group's state when last read."""

    consumer: str
    read: int
    """Entries taken: new ones and claimed ones."""
    answered: int
    """Replies with status 200 (``replayed`` ones included)."""
    replayed: int
    """Answers of retried requests, from the agent's record."""
    rejected: int
    """Readable requests refused: 409 (superseded ``request_id``), 503 (planning failed, model unavailable)."""
    dead_letters: int
    """Entries that cannot be planned (not JSON, invalid, not for the served model): dead-lettered."""
    claimed: int
    """Entries taken over from consumers that held them too long."""
    batches: int
    """Batches answered."""
    unsettled: int
    """Batches left unacknowledged because a state or telemetry write failed (claimed again later)."""
    lag: int | None
    """The group's entries not yet read (None: unknown)."""
    pending: int | None
    """The group's entries read and not yet acknowledged (None: unknown)."""
    errors: int
    """Failed Redis calls (each retried)."""
    last_error: str | None
    unreachable_s: float | None
    """Seconds since Redis last answered, while it does not (None: it does)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConsumerLoop:
    """One consumer named ``consumer`` of ``names.plan_group``: ``start``, then ``stop`` (or ``run`` by hand)."""

    def __init__(self, redis_url: str, names: BusNames, consumer: str, engine: Engine, check: Check,
                 settings: LoopSettings = LoopSettings(), metrics: Any | None = None) -> None:
        """``metrics``: a ``serving.metrics.ServingMetrics`` (None: nothing exported)."""
        self.names, self.consumer, self.settings, self.metrics = names, consumer, settings, metrics
        self.engine = engine
        self.redis = aioredis.Redis.from_url(redis_url, socket_timeout=settings.block_ms / 1000 + 10,
                                             socket_connect_timeout=5)
        self._counts: Counter[str] = Counter()
        self.answerer = BatchAnswerer(self.redis, names, engine, check, self._counts, metrics)
        self._sync = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)  # housekeeping
        self._forget = self.redis.register_script(_FORGET)
        self._stream, self._group = names.requests, names.plan_group
        self._held: set[bytes] = set()  # entries in flight here: a claim must not start them twice
        self._handlers: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._in_flight = 0
        self._lag: int | None = None
        self._pending: int | None = None
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._group_ready = self._stopping = False
        self._main: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run the loop in the background of the running event loop."""
        self._main = asyncio.get_running_loop().create_task(self.run())

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop reading, let the batches in flight finish (up to ``timeout_s``), close the connections."""
        self._stopping = True
        self._room.set()
        if self._main is not None:
            done, _ = await asyncio.wait({self._main}, timeout=timeout_s)
            if not done:
                self._main.cancel()
        await self.redis.aclose()
        self._sync.close()

    def problem(self) -> str | None:
        """Why this consumer is not working and cannot recover (its loop ended), else None."""
        if self._main is None or not self._main.done() or self._stopping:
            return None
        error = None if self._main.cancelled() else self._main.exception()
        return f"the stream consumer's loop ended: {type(error).__name__ if error else 'cancelled'}: " \
               f"{one_line(error) if error else ''}"

    def stats(self) -> BusStats:
        since = self._failing_since
        counts = {k: self._counts[k] for k in ("read", "answered", "replayed", "rejected", "dead_letters",
                                               "claimed", "batches", "unsettled", "errors")}
        return BusStats(consumer=self.consumer, **counts, lag=self._lag, pending=self._pending,
                        last_error=self._last_error,
                        unreachable_s=None if since is None else round(time.monotonic() - since, 3))

    # -- reading ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Read until ``stop``, then wait for the batches in flight. Redis errors are counted and retried."""
        chores = [asyncio.get_running_loop().create_task(self._every(period, chore)) for period, chore in
                  ((self.settings.claim_idle_ms / 10_000, self.claim), (HOUSEKEEPING_S, self.housekeep))]
        backoff = 0.1
        try:
            while not self._stopping:
                try:
                    await self._read()
                    backoff = 0.1
                except (redis.RedisError, OSError) as err:
                    self._failed(err)
                    await asyncio.sleep(backoff)
                    backoff = min(2 * backoff, MAX_BACKOFF_S)
        finally:
            for chore in chores:
                chore.cancel()
            await asyncio.wait(chores, timeout=HOUSEKEEPING_S)
            if self._handlers:
                await asyncio.wait(set(self._handlers), timeout=self.settings.claim_idle_ms / 1000)

    async def _read(self) -> None:
        """One read of new entries (when there is room for more in flight), each batch started as a task."""
        if not self._group_ready:
            try:  # from the stream's start: requests added before the app started are answered too
                await self.redis.xgroup_create(self._stream, self._group, id="0", mkstream=True)
            except redis.ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise
            self._group_ready = True
        while self._in_flight >= self.settings.max_in_flight and not self._stopping:
            self._room.clear()
            await self._room.wait()
        if self._stopping:
            return
        await asyncio.sleep(0)  # the batches just started reach the engine (their checks do not wait)
        await self.engine.until_idle()  # requests that arrive meanwhile would wait for the cycle anyway
        count = min(self.settings.read_count, self.settings.max_in_flight - self._in_flight)
        reply = await self.redis.xreadgroup(self._group, self.consumer, {self._stream: ">"}, count=count,
                                            block=self.settings.block_ms)
        self._reached()
        if reply and reply[0][1]:
            self._start(reply[0][1])

    async def claim(self) -> int:
        """Take over entries pending longer than ``claim_idle_ms`` at any consumer, and delete consumers
        long gone; returns the entries taken."""
        cursor, taken = b"0-0", 0
        while True:
            cursor, entries, *_ = await self.redis.xautoclaim(
                self._stream, self._group, self.consumer, self.settings.claim_idle_ms, cursor,
                count=self.settings.read_count)
            entries = [(i, fields) for i, fields in entries if i not in self._held]
            if entries:
                self._start(entries)
                taken += len(entries)
            if cursor in (b"0-0", "0-0"):
                break
        self._counts["claimed"] += taken
        gone = await self._forget(keys=[self._stream], args=[self._group, self.settings.forget_idle_ms,
                                                             self.consumer])
        if gone:
            logger.info("stream consumer %s deleted consumers gone idle: %s", self.consumer, gone)
        self._reached()
        return taken

    def _start(self, entries: list[Entry]) -> None:
        ids = [entry_id for entry_id, _ in entries]
        self._held.update(ids)
        self._in_flight += len(ids)
        self._counts["read"] += len(ids)
        task = asyncio.get_running_loop().create_task(self._answer(entries))
        self._handlers.add(task)
        task.add_done_callback(lambda t: self._finished(t, ids))

    def _finished(self, task: asyncio.Task[None], ids: list[bytes]) -> None:
        self._handlers.discard(task)
        self._held.difference_update(ids)
        self._in_flight -= len(ids)
        self._room.set()
        if not task.cancelled() and task.exception() is not None:  # a bug: its entries are claimed again
            logger.error("stream consumer %s: a batch failed", self.consumer, exc_info=task.exception())

    async def _answer(self, entries: list[Entry]) -> None:
        try:
            await self.answerer.handle(entries)
            self._reached()
        except (redis.RedisError, OSError) as err:  # what was not acknowledged is claimed again
            self._failed(err)

    # -- housekeeping -----------------------------------------------------------------------
    async def housekeep(self) -> None:
        """The group's lag and pending count, a trim of the request stream, Redis's clock offset."""
        self._lag, self._pending, self.answerer.offset_s = await asyncio.to_thread(self._housekeeping)
        self._reached()
        if self.metrics is not None:
            self.metrics.report_bus(self._lag, self._pending)

    def _housekeeping(self) -> tuple[int | None, int | None, float]:
        before = time.time()
        seconds, micros = self._sync.time()
        offset = seconds + micros / 1e6 - (before + time.time()) / 2
        groups = {g["name"]: g for g in self._sync.xinfo_groups(self._stream)} if self._sync.exists(self._stream) \
            else {}
        group = groups.get(self._group.encode())
        if groups:
            streams.trim_acknowledged(self._sync, self._stream)
        return (None, None, offset) if group is None else (group.get("lag"), group.get("pending"), offset)

    async def _every(self, period_s: float, chore: Callable[[], Awaitable[Any]]) -> None:
        while not self._stopping:  # besides the cancel: a cancel that lands inside a Redis call may be lost
            await asyncio.sleep(period_s)
            try:
                await chore()
            except (redis.RedisError, OSError) as err:
                self._failed(err)

    def _reached(self) -> None:
        if self._failing_since is not None:
            logger.info("stream consumer %s: Redis answers again after %.1f s", self.consumer,
                        time.monotonic() - self._failing_since)
        self._failing_since = None

    def _failed(self, err: BaseException) -> None:
        """Count a failed Redis call (logged when the failing starts, not at every retry); a group gone (the
        stream deleted) is created again by the next read."""
        self._counts["errors"] += 1
        self._last_error = f"{type(err).__name__}: {one_line(err)[:200]}"
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            logger.warning("stream consumer %s: %s; retrying", self.consumer, self._last_error)
        if "NOGROUP" in str(err):
            self._group_ready = False

