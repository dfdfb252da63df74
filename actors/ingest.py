"""The telemetry ingest consumer: transitions from a Redis Stream into the Arrow logs, each logged once.

Guarantees (one consumer group, any number of consumers, each with its own stable name):

- **Acknowledged only when durable**: entries are read in batches (``XREADGROUP``), buffered, written as one
  Parquet file per flush (every ``flush_rows`` rows or ``flush_s`` seconds, the agent a column, under
  ``<log dir>/<YYYY-MM-DD>/``), and acknowledged (``XACK``) only after the file is renamed into place.
- **Logged once**: a consumer that died after writing and before acknowledging gets its entries back (its own
  pending entries when it restarts under the same name, or another consumer's ``XAUTOCLAIM`` after
  ``claim_idle_s``); the ledger (``actors/ingest_ledger.py``) says which of them are already in a file, and
  those are acknowledged without being written again. Condition: ``claim_idle_s`` exceeds a flush interval
  plus a flush's duration, so no entry is claimed while its consumer still holds it (checked at
  construction, with a 2x margin).
- **Each (agent_id, eps_id, t) once**, also when a producer sent it twice (the engine does when a replica
  dies between its telemetry append and its state write): a key is written once per flush, and not at all
  when ``RecentKeys`` (``actors/ingest_window.py``) holds it: the keys this consumer wrote in the last
  ``dedupe_window_s``, and those of the group's files from that window, loaded at ``start``. Exact with one
  consumer in the group (``wm serve``'s logger) for copies less than ``dedupe_window_s`` apart. With
  several, a copy read by another consumer than the first is dropped only if that one started after the
  first was written; otherwise the logs hold the key twice.
- **Bad entries** (undecodable, wrong (S, A), NaN) go to the dead-letter stream with the reason and are
  acknowledged; the consumer goes on. Redis or disk errors are counted, retried with backoff, never fatal.
- **Compaction**: once an hour, past days' files are merged into one per day (``actors.ingest_compaction``).
- **Trimming** after each flush, below what every group still needs (``streams.trim_acknowledged``).

Plain object, or a Ray actor: ``ray.remote(IngestConsumer).options(max_concurrency=2)``, so ``stop`` and
``stats`` answer while ``run`` loops.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import redis

from actors import streams
from actors.ingest_compaction import CompactPastDays
from actors.ingest_ledger import IngestLedger, LedgerFile
from actors.ingest_window import RecentKeys
from worldmodel.data import TrajectoryWriter, Transitions
from worldmodel.data.writer import one_line

META_STREAM_IDS = b"fleetwm.stream_ids"
"""A flush file's metadata: "<stream> <first id> <last id>" of the entries it holds."""


@dataclass(frozen=True)
class IngestConfig:
    """Where the consumer reads and how it flushes and claims; ``wm ingest`` reads its defaults from here."""

    stream: str = streams.TELEMETRY_STREAM
    """The telemetry stream read."""
    group: str = streams.INGEST_GROUP
    """The consumer group (created at the stream's start if missing)."""
    dead_letters: str = streams.TELEMETRY_DEAD_LETTERS
    """Where bad entries go, with the reason."""
    flush_rows: int = 50_000
    """Write a file once this many rows are buffered."""
    flush_s: float = 10.0
    """Write at least this often while rows are buffered."""
    read_count: int = 5_000
    """Entries asked for per XREADGROUP / XAUTOCLAIM."""
    block_ms: int = 1_000
    """How long a read waits for new entries (also how soon ``stop`` is noticed)."""
    claim_idle_s: float = 60.0
    """Entries pending this long at another (dead) consumer are claimed."""
    dedupe_window_s: float = 600.0
    """A key written this recently is not written again (memory: ~16 bytes per episode in the window)."""

    def __post_init__(self) -> None:
        for name in ("flush_rows", "read_count", "block_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("flush_s", "dedupe_window_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.claim_idle_s < 2 * (self.flush_s + self.block_ms / 1000):
            raise ValueError(f"claim_idle_s={self.claim_idle_s} must be at least twice flush_s + block_ms "
                             f"({2 * (self.flush_s + self.block_ms / 1000)} s), or live consumers' entries get claimed")


@dataclass(frozen=True)
class IngestStats:
    """A consumer's counts since it started."""

    read: int
    """Entries taken from the stream (new, own pending at start, claimed)."""
    written: int
    files: int
    duplicates: int
    """Entries acknowledged without writing: already in a file, repeating a key within a flush, or a key
    written in the last ``dedupe_window_s``."""
    dead_letters: int
    claimed: int
    """Entries claimed from other consumers (or recovered from this consumer's own past)."""
    buffered: int
    errors: int
    """Failed Redis or file operations (each retried)."""
    last_error: str | None
    """The latest failure, one line."""
    failing_since: float | None
    """Unix time of the first failure since operations last succeeded; None while they succeed."""

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class IngestConsumer:
    """One consumer of the ingest group; ``start`` once, then ``run`` (or ``step`` / ``flush`` by hand)."""

    def __init__(self, redis_url: str, log_dir: str, consumer: str, config: IngestConfig = IngestConfig(),
                 env_id: str = "") -> None:
        self.config, self.consumer = config, consumer
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=config.block_ms / 1000 + 10,
                                          socket_connect_timeout=5)
        self.writer = TrajectoryWriter(log_dir, env_id=env_id)
        self.ledger = IngestLedger(self.writer, config.group, consumer)
        self.compactor = CompactPastDays(log_dir)
        self.recent = RecentKeys(config.dedupe_window_s)
        self.started = False
        self._parts: list[Transitions] = []
        self._ids: list[bytes] = []
        self._unacked: list[bytes] = []  # written, acknowledgement not yet confirmed by Redis
        self._dims: tuple[int, int] | None = None
        self._since = self._last_claim = time.monotonic()
        self._stop = threading.Event()
        self._counts = dict.fromkeys(("read", "written", "files", "duplicates", "dead_letters", "claimed", "errors"), 0)
        self._last_error: str | None = None
        self._failing_since: float | None = None

    def start(self) -> None:
        """Create the group if missing (from the stream's start), load the keys of the group's recent files,
        then take back this consumer's pending entries."""
        try:
            self.redis.xgroup_create(self.config.stream, self.config.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        if not self.started:
            self.ledger.recall(self.recent, self.config.dedupe_window_s)
        cursor, held = b"0", set(self._ids)
        while entries := self._read(cursor):
            self._take([(i, fields) for i, fields in entries if i not in held], suspect=True)
            cursor = entries[-1][0]
        self.started = True

    def step(self) -> int:
        """Claim idle entries when due, read new ones (waiting up to ``block_ms``), flush when due.

        Returns:
            The entries read.
        """
        if time.monotonic() - self._last_claim >= self.config.claim_idle_s / 2:
            self.claim()
        entries = self._read(b">", block=self.config.block_ms)
        self._take(entries, suspect=False)
        due = self._ids and time.monotonic() - self._since >= self.config.flush_s
        if len(self._ids) >= self.config.flush_rows or due or self._unacked:  # _unacked: an XACK that failed
            self.flush()
        return len(entries)

    def claim(self) -> int:
        """Claim entries pending longer than ``claim_idle_s`` at any consumer; returns how many."""
        self._last_claim = time.monotonic()
        cursor, held, total = b"0-0", set(self._ids), 0
        while True:
            cursor, entries, *_ = self.redis.xautoclaim(self.config.stream, self.config.group, self.consumer,
                                                        int(self.config.claim_idle_s * 1000), cursor,
                                                        count=self.config.read_count)
            entries = [(i, fields) for i, fields in entries if i not in held]
            total += len(entries)
            self._take(entries, suspect=True)
            if cursor in (b"0-0", "0-0"):
                break
        self._counts["claimed"] += total
        return total

    def flush(self) -> int:
        """Write the buffered rows as one file per UTC day, then acknowledge their entries; returns rows written."""
        if self._unacked:
            self._ack()
        if not self._ids:
            return 0
        batch, ids = Transitions.concat(self._parts), self._ids
        keys = _keys(self.recent, batch)  # (B,)
        keep = self.recent.fresh(keys)
        rows = batch if keep.all() else batch.select(keep)
        self._parts = [rows]  # repeated keys leave the buffer; their entries are acknowledged with the rest
        self._count(duplicates=len(batch) - len(rows))
        first, last = (i.decode() for i in (min(ids, key=streams.id_key), max(ids, key=streams.id_key)))
        planned = self.writer.plan_by_day(rows)
        recent_ms = int((time.time() - self.config.dedupe_window_s) * 1000)
        self.ledger.record([LedgerFile(p.path[len(self.writer.root) + 1:], first, last) for p in planned],
                           self._oldest_pending(), recent_ms)
        for i, p in enumerate(planned):
            self.writer.write_file(p, {META_STREAM_IDS: f"{self.config.stream} {first} {last}".encode()})
            # counted and remembered file by file: a retry after a later file failed writes only the rest
            self.recent.add(keys[keep] if len(planned) == 1 else _keys(self.recent, p.rows), time.monotonic())
            self._parts = [q.rows for q in planned[i + 1:]]
            self._count(written=len(p.rows), files=1)
        self._parts, self._ids, self._since = [], [], time.monotonic()
        self._unacked = ids
        self._ack()
        streams.trim_acknowledged(self.redis, self.config.stream)
        return len(rows)

    def run(self, progress: Callable[[IngestStats], None] | None = None, progress_s: float = 5.0,
            between: Callable[[], None] | None = None) -> IngestStats:
        """``start`` if not started, step until ``stop``, then flush what is held. Errors are counted and
        retried with backoff (1 s to 30 s). ``between`` is called on this thread after each step (a host's
        requests, such as ``StreamLogger.flush``); its Redis and file errors count as the step's."""
        backoff, last_progress = 1.0, time.monotonic()
        while not self._stop.is_set():
            try:
                if not self.started:
                    self.start()
                self.step()
                if between is not None:
                    between()
                self._compact()
                backoff, self._failing_since = 1.0, None
            except (redis.RedisError, OSError) as e:
                self.note_error(e)
                self._stop.wait(backoff)
                backoff = min(2 * backoff, 30.0)
            if progress and time.monotonic() - last_progress >= progress_s:
                progress(self.stats())
                last_progress = time.monotonic()
        self._final_flush()
        return self.stats()

    def _compact(self) -> None:
        """Merge past days' files when due (``actors.ingest_compaction``); a failure is counted, never fatal."""
        try:
            self.compactor.maybe()
        except Exception as e:  # a bad file in a past day must not stop the ingest of today's
            self.note_error(e)

    def drain(self, timeout_s: float | None = None) -> int:
        """Read the entries not yet delivered to the group (for at most ``timeout_s``), then flush; returns rows
        written. Not while ``run`` loops on another thread (``StreamLogger`` calls it from ``run``'s)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if not self.started:
            self.start()
        while (deadline is None or time.monotonic() < deadline) and (entries := self._read(b">")):
            self._take(entries, suspect=False)
        return self.flush()

    def stop(self) -> None:
        """Make ``run`` return after its current step (within about ``block_ms``)."""
        self._stop.set()

    def stats(self) -> IngestStats:
        return IngestStats(**self._counts, buffered=len(self._ids), last_error=self._last_error,
                           failing_since=self._failing_since)

    def _final_flush(self, attempts: int = 5) -> None:
        for attempt in range(attempts):
            try:
                self.flush()
                return
            except (redis.RedisError, OSError) as e:
                self.note_error(e)
                time.sleep(min(2.0 ** attempt, 10.0))

    def _read(self, cursor: bytes, block: int | None = None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply = self.redis.xreadgroup(self.config.group, self.consumer, {self.config.stream: cursor},
                                      count=self.config.read_count, block=block)
        return reply[0][1] if reply else []

    def _take(self, entries: list[tuple[bytes, dict[bytes, bytes]]], suspect: bool) -> None:
        """Buffer the decodable entries; dead-letter the rest; with ``suspect`` (maybe written already, by a
        consumer that died before acknowledging), acknowledge those the ledger finds in a file."""
        if not entries:
            return
        if not self._ids:
            self._since = time.monotonic()
        self._counts["read"] += len(entries)
        decoded = streams.decode_entries(entries, self._dims)
        self._dims = decoded.dims
        done = [bad.entry_id for bad in decoded.bad]
        batch, ids = decoded.batch, decoded.ids
        if batch is not None and suspect:
            written = self.ledger.written_keys(ids)
            fresh = np.array([k not in written for k in zip(batch.agent_id, batch.eps_id, batch.t.tolist())])
            done += [i for i, f in zip(ids, fresh) if not f]
            self._count(duplicates=int((~fresh).sum()))
            batch, ids = batch.select(fresh), [i for i, f in zip(ids, fresh) if f]
        if batch is not None and ids:
            self._parts.append(batch)
            self._ids.extend(ids)
        if done:
            pipe = self.redis.pipeline(transaction=False)
            streams.dead_letter(pipe, self.config.stream, decoded.bad, self.config.dead_letters)
            pipe.xack(self.config.stream, self.config.group, *done)
            pipe.execute()
            self._count(dead_letters=len(decoded.bad))

    def _ack(self) -> None:
        for start in range(0, len(self._unacked), 10_000):  # bounded command size
            self.redis.xack(self.config.stream, self.config.group, *self._unacked[start:start + 10_000])
        self._unacked = []

    def _oldest_pending(self) -> str | None:
        pending = self.redis.xpending(self.config.stream, self.config.group)
        oldest = pending["min"] if pending["pending"] else None
        return oldest.decode() if isinstance(oldest, bytes) else oldest

    def _count(self, **counts: int) -> None:
        for name, n in counts.items():
            self._counts[name] += n

    def note_error(self, error: BaseException) -> None:
        """Count a failure (one the loop retries, or one its host caught); ``stats`` reports it until a step succeeds."""
        self._counts["errors"] += 1
        self._last_error = f"{type(error).__name__}: {one_line(error)}"
        self._failing_since = self._failing_since or time.time()


def _keys(recent: RecentKeys, batch: Transitions) -> np.ndarray:
    """The (B,) keys of ``batch``'s rows."""
    return recent.keys(batch.agent_id, batch.eps_id, batch.t)
