"""Per-agent state, sharded by agent id across named Ray actors, snapshotted to storage.

An agent's record (``actors.records.AgentRecord``) holds what the next request for that agent needs:
its warm start (the last plan, shifted), a recurrent model's hidden state, its last observation and
the action answered to it (so the next request's observation closes the transition), the model
version that served it, the ids of its last requests and the answer to the newest (so a retried
request is answered again instead of planned and logged twice), and its episode bookkeeping. Every
call reads or writes a whole batch of agents, as columns (``AgentRecords``); a store
(``actors.state_store``) splits a batch by shard and calls every shard once, in parallel.

Durability, by setting:

- no ``snapshot_uri`` (nothing written to storage): a shard that crashes restarts empty and every
  agent on it loses its state, idle agents included;
- ``snapshot_uri`` with ``snapshot_interval_s > 0``: a shard writes its whole table to
  ``<snapshot_uri>/<shard name>.pkl`` atomically (temp file + rename; one object put on object
  stores) every ``snapshot_interval_s`` seconds when something changed, and a restarted shard (Ray
  restarts it: ``max_restarts=-1``) loads that file: a crash loses at most the updates of the last
  ``snapshot_interval_s`` seconds (plus the write in progress). A failed write is logged, reported in
  ``stats()["snapshot_error"]`` and retried with backoff (up to ``MAX_RETRY_S``), eviction going on;
- ``snapshot_uri`` with ``snapshot_interval_s=0``: every write is snapshotted before it returns and
  nothing acknowledged is lost.

Snapshots are pickled on the shard's event loop (a consistent copy) and written on a thread, one write
at a time, so a slow or fsyncing store never stalls the shard's calls. A snapshot that cannot be read
at restart is moved aside (``<shard name>.pkl.unreadable-<unix time>``) and the shard starts empty.

What is lost costs little: an agent whose record is lost or stale plans once from a cold start and
its next observation opens a new logged episode instead of closing a transition.

Writer leases: every ingress replica (``serving.engine.PlanEngine``) renews a lease in every shard;
a shard answers how many writers hold a live lease, so a replica keeps its own copy of the records
it wrote only while it is the one writer.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from dataclasses import dataclass
from typing import Any, Sequence

from actors.records import AgentRecord, AgentRecords
from worldmodel.data.writer import publish_bytes, resolve_root

logger = logging.getLogger(__name__)

MAX_RETRY_S = 30.0
"""Longest wait between retries of a failing periodic snapshot (the wait doubles from the interval)."""
UNREADABLE = (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError)
"""What reading a damaged, truncated or foreign snapshot raises (a missing one is ``FileNotFoundError``)."""


@dataclass(frozen=True)
class StateConfig:
    """How agent state is sharded, kept and snapshotted."""

    shards: int = 1
    """Named shard actors; agents are assigned by a stable hash of their id. Every planner cycle calls
    each shard twice (read, write), so on one node one shard is fastest (100 agents at 10 Hz: 16% more
    requests/s than four); add shards when many ingress replicas' calls queue on one."""
    snapshot_uri: str | None = None
    """Directory or URI for snapshots (None: none, and a shard crash loses every agent's state on it)."""
    snapshot_interval_s: float = 1.0
    """With snapshots, the most seconds of updates a crash can lose (0: snapshot every write before
    acknowledging it)."""
    ttl_s: float = 3600.0
    """Agents idle this long are evicted."""
    name: str = "fleetwm-agent-state"
    """Prefix of the shard actors' names."""

    @property
    def shard_names(self) -> list[str]:
        """The shard actors' names, in shard order."""
        return [f"{self.name}-{i}" for i in range(self.shards)]

    def __post_init__(self) -> None:
        if not isinstance(self.shards, int) or self.shards < 1:
            raise ValueError(f"shards must be an integer >= 1, got {self.shards!r}")
        if self.snapshot_interval_s < 0 or self.ttl_s <= 0:
            raise ValueError(f"snapshot_interval_s must be >= 0 and ttl_s > 0, got "
                             f"{self.snapshot_interval_s} and {self.ttl_s}")


class AgentStateShard:
    """One shard: a table of agent records with TTL eviction and snapshots (hosted as an async Ray actor)."""

    def __init__(self, name: str, snapshot_uri: str | None, snapshot_interval_s: float, ttl_s: float) -> None:
        self.name, self.interval, self.ttl = name, snapshot_interval_s, ttl_s
        self.records: dict[str, AgentRecord] = {}
        self.writers: dict[str, float] = {}
        """Writer id -> when its lease ends (monotonic s); kept in memory only, renewed every second."""
        self.changes = 0
        """Changes made to the table so far; ``saved`` of them are in the last snapshot written."""
        self.saved = 0
        self.snapshots = 0
        self.snapshot_error: str | None = None
        """Why the last snapshot failed; None once one succeeds."""
        self.fs, self.path = resolve_root(snapshot_uri) if snapshot_uri else (None, None)
        self.restored = self._restore()
        self._task: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()  # one snapshot write in flight at a time

    @property
    def dirty(self) -> bool:
        """Something changed since the last snapshot written."""
        return self.changes != self.saved

    # -- public calls, one per batch ------------------------------------------------------
    async def get(self, agent_ids: Sequence[str]) -> tuple[list[int], AgentRecords]:
        """The records of ``agent_ids`` that are here: (their positions in ``agent_ids``, their columns)."""
        self._ensure_loop()
        found = [(i, self.records.get(a)) for i, a in enumerate(agent_ids)]
        found = [(i, r) for i, r in found if r is not None]
        return [i for i, _ in found], AgentRecords.pack([r for _, r in found])  # type: ignore[misc]

    async def put(self, records: AgentRecords) -> int:
        """Replace the records of their agents; returns how many were written."""
        self._ensure_loop()
        for record in records.unpack():
            self.records[record.agent_id] = record
        self.changes += 1
        if self.interval == 0:
            await self.snapshot()
        return len(records)

    async def reset(self, agent_ids: Sequence[str]) -> int:
        """Forget ``agent_ids``; returns how many were known."""
        self._ensure_loop()
        known = sum(self.records.pop(a, None) is not None for a in agent_ids)
        self.changes += known > 0
        if self.interval == 0 and known:
            await self.snapshot()
        return known

    async def lease(self, writer_id: str, lease_s: float) -> int:
        """Renew ``writer_id``'s lease for ``lease_s`` seconds; returns how many writers hold a live one."""
        now = time.monotonic()
        self.writers[writer_id] = now + lease_s
        for writer in [w for w, end in self.writers.items() if end < now]:
            del self.writers[writer]
        return len(self.writers)

    async def stats(self) -> dict[str, Any]:
        import ray  # only where a shard runs as an actor: this module stays importable without Ray

        return {"name": self.name, "agents": len(self.records), "snapshots": self.snapshots,
                "restored": self.restored, "snapshot_error": self.snapshot_error,
                "node_id": ray.get_runtime_context().get_node_id()}

    # -- durability and eviction ---------------------------------------------------------
    def evict(self, now: float | None = None) -> int:
        """Drop agents idle longer than the TTL; returns how many."""
        cutoff = (now or time.time()) - self.ttl
        idle = [a for a, r in self.records.items() if r.updated < cutoff]
        for a in idle:
            del self.records[a]
        self.changes += bool(idle)
        return len(idle)

    async def snapshot(self) -> None:
        """Write the whole table atomically; readers see the old or the new file, never a partial one.

        Returns once a write holding every change made before the call has finished (one write runs at
        a time; a call that waited for another's write may find its changes in it).

        Raises:
            OSError (or pyarrow's error): the write failed; the table stays marked changed.
        """
        changes = self.changes
        if self.fs is None:
            self.saved = changes
            return
        async with self._writing:
            if self.saved >= changes:  # the write this call waited for already held its changes
                return
            changes = self.changes
            try:
                data = pickle.dumps(self.records, protocol=pickle.HIGHEST_PROTOCOL)  # on the loop: a consistent copy
                await asyncio.to_thread(publish_bytes, self.fs, self._file, data)
            except Exception as err:
                self.snapshot_error = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
                raise
            self.saved, self.snapshot_error = changes, None
            self.snapshots += 1

    @property
    def _file(self) -> str:
        return f"{self.path}/{self.name}.pkl"

    def _restore(self) -> int:
        if self.fs is None:
            return 0
        try:
            with self.fs.open_input_stream(self._file) as f:
                loaded = pickle.loads(f.read())
            if not isinstance(loaded, dict):
                raise TypeError(f"holds a {type(loaded).__name__}, not a dict of agent records")
        except FileNotFoundError:
            return 0
        except UNREADABLE as err:  # a damaged file must not keep the shard from starting, restart after restart
            self._move_aside(err)
            return 0
        self.records = {a: r for a, r in loaded.items() if isinstance(r, AgentRecord)}
        if len(self.records) < len(loaded):  # written by a fleetwm whose records had another form
            logger.warning("shard %s: %d of %d snapshot records are not AgentRecords; those agents start fresh",
                           self.name, len(loaded) - len(self.records), len(loaded))
        return len(self.records)

    def _move_aside(self, err: BaseException) -> None:
        """Keep an unreadable snapshot for inspection under another name, so the next write does not replace it."""
        aside = f"{self._file}.unreadable-{int(time.time())}"
        try:
            self.fs.move(self._file, aside)  # type: ignore[union-attr]
            kept = f"kept as {aside}"
        except OSError as move_err:
            kept = f"could not be moved aside ({type(move_err).__name__}: {move_err})"
        logger.error("shard %s: snapshot %s cannot be read (%s: %s); starting empty, the file %s",
                     self.name, self._file, type(err).__name__, err, kept)

    def _ensure_loop(self) -> None:
        # The background loop starts with the first call: the actor's event loop runs by then. A loop
        # that ended (cancelled, or a bug) is started again, so eviction and snapshots never stop for good.
        if self._task is not None and self._task.done():
            if not self._task.cancelled() and self._task.exception() is not None:
                logger.error("shard %s: maintenance stopped; restarting it", self.name, exc_info=self._task.exception())
            self._task = None
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._maintain())

    async def _maintain(self) -> None:
        period = self.interval if self.interval > 0 else 1.0
        wait = period
        while True:
            await asyncio.sleep(wait)
            self.evict()
            if not self.dirty:
                continue
            try:
                await self.snapshot()
                wait = period
            except Exception:  # a failing store: reported in stats, retried later, eviction goes on
                wait = min(wait * 2, max(MAX_RETRY_S, period))
                logger.warning("shard %s: snapshot failed, retrying in %.1f s: %s",
                               self.name, wait, self.snapshot_error)
