"""An engine's agent records: read from its own cache while its writer lease says it is the only writer.

Every engine that writes agent records (the HTTP ingress's replicas, the stream consumers) renews a lease in
the state shards every ``LEASE_RENEW_S``; a shard answers how many writers hold a live one. An engine alone
answers from its ``RecordCache`` (what it wrote itself), and reads the shards as soon as another writer shows
up. A writer that found itself alone learns of a new one only at its next renewal, so an engine joining others
waits ``JOIN_S`` before its first read. An engine idle for ``leave_idle_s`` gives its lease up (an HTTP ingress
beside a busy stream consumer, which is then left alone with its cache) and joins again at its next batch.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Callable

from actors.records import AgentRecord, RecordCache
from actors.state_store import AgentStateStore
from serving.engine_writes import EngineWrites

logger = logging.getLogger("ray.serve")

LEASE_S = 3.0
"""A writer lease lasts this long; the engine renews it every ``LEASE_RENEW_S``."""
LEASE_RENEW_S = 0.25
"""Seconds between lease renewals: the longest another writer's arrival can go unnoticed, and so what an HTTP ingress
joining a busy stream consumer waits (``JOIN_S``) before its first batch after an idle spell (``IDLE_LEAVE_S``)."""
JOIN_S = 1.5 * LEASE_RENEW_S
"""How long a writer joining others waits before its first read: one renewal period of theirs, and a margin."""
IDLE_LEAVE_S = 10.0
"""An HTTP ingress's engine that has run no batch for this long gives its lease up, so that a busy stream consumer,
left alone, uses its cache; its next batch joins again (``WriterLease``'s ``leave_idle_s``)."""


class WriterLease:
    """One engine's lease and record cache (``cache`` None: no cache, every read from the shards).

    Args:
        store: the state shards; writes: the engine's writes (a leaving engine waits for them).
        idle_s: how long the engine has been without a batch (None while one runs or waits).
        leave_idle_s: give the lease up after this long idle (None: keep it; a stream consumer, whose requests
            another replica may claim, must not wait to join again while it holds some).
    """

    def __init__(self, store: AgentStateStore, cache: RecordCache | None, writes: EngineWrites,
                 idle_s: Callable[[], float | None], leave_idle_s: float | None = IDLE_LEAVE_S) -> None:
        self.store, self.cache, self.writes, self.idle_s, self.leave_idle_s = store, cache, writes, idle_s, leave_idle_s
        self.writer_id = uuid.uuid4().hex
        self.sole_writer = False
        """Whether the last renewal found this engine the only live writer (the cache is used only then)."""
        self.leaser: asyncio.Task[None] | None = None
        """The renewals' task while the engine holds its lease."""
        self._epoch = 0
        """Counts the cache's clearings: a read that awaited the shards across one must not fill the cache."""

    async def read(self, agent_ids: list[str]) -> list[AgentRecord | None]:
        """The agents' records: cached ones from the cache (while the sole writer), the rest from the shards."""
        cache = self.cache if self.sole_writer else None
        if cache is None:
            return await self.store.get(agent_ids)
        records = cache.get(agent_ids)
        missing = [i for i, r in enumerate(records) if r is None]
        if missing:
            epoch = self._epoch
            fetched = await self.store.get([agent_ids[i] for i in missing])
            for i, record in zip(missing, fetched):
                records[i] = record
            if self.sole_writer and self._epoch == epoch:  # no other writer showed up meanwhile
                cache.put([r for r in fetched if r is not None])
        return records

    def wrote(self, records: list[AgentRecord]) -> None:
        """Records this engine has just submitted to the shards: kept in the cache while the sole writer."""
        if self.cache is not None and self.sole_writer:
            self.cache.put(records)

    def drop(self, agent_ids: list[str]) -> int:
        """Forget agents in the cache; returns how many it held."""
        return self.cache.drop(agent_ids) if self.cache is not None else 0

    async def renew(self) -> int:
        """Renew the lease in the shards; returns the live writers the shards know.

        The cache is emptied, and left unused, as soon as another writer holds a lease, and emptied again
        when this engine becomes the only writer (what it holds may predate the other writer's writes)."""
        try:
            writers = await self.store.lease(self.writer_id, LEASE_S)
        except Exception as err:  # the shards are unreachable: read them (and fail there) rather than trust a copy
            logger.warning("writer lease renewal failed, record cache off: %s", err)
            writers = 0
        sole = writers == 1
        if not sole or not self.sole_writer:
            self._clear()
        self.sole_writer = sole
        return writers

    async def join(self) -> None:
        """Take the lease and keep renewing it (until idle for ``leave_idle_s``); a replica's constructor calls it,
        or else a batch's first read (``keep``).

        When other writers hold a lease, wait ``JOIN_S`` before returning: a writer whose last renewal found
        it alone keeps answering from its cache until its next renewal, and must not miss what this engine
        writes meanwhile."""
        if self.cache is None or self.leaser is not None:
            return
        self.leaser = asyncio.get_running_loop().create_task(self._renew_forever())
        if await self.renew() > 1:
            await asyncio.sleep(JOIN_S)

    async def leave(self) -> None:
        """Give the lease up (the cache off and emptied first); the next batch joins again. Its writes are
        settled first: the writer left alone reads what this one wrote from the shards."""
        self.leaser, self.sole_writer = None, False
        self._clear()
        await self.writes.settled(since=self.writes.submitted)  # waits for every write; asks about none
        if self.leaser is None:  # not joined again meanwhile (its renewal, sent later, would stand anyway)
            await self.store.lease(self.writer_id, 0.0)

    async def keep(self) -> None:
        """With a cache: join before a batch's first read, and again after leaving."""
        if self.cache is None:
            return
        if self.leaser is None:
            await self.join()
        elif self.leaser.done():  # the loop it ran on has ended (a test's asyncio.run): renew on this one
            self.leaser = asyncio.get_running_loop().create_task(self._renew_forever())

    def _clear(self) -> None:
        if self.cache is not None:
            self.cache.clear()
            self._epoch += 1

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(LEASE_RENEW_S)
            idle_s = self.idle_s()
            if self.leave_idle_s is not None and idle_s is not None and idle_s > self.leave_idle_s:
                await self.leave()
                return
            await self.renew()
