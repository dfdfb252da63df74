"""Telemetry logger: the fleet's served transitions, appended to the Arrow logs (hosted as an async Ray actor).

What it guarantees:

- **Start**: the log location is probed (``check_writable``); one that cannot be written fails the start
  with one line naming it. A restart by Ray does not fail on it: it starts degraded and retries.
- **Once**: a transition is keyed by (``eps_id``, ``t``); a key among the last ``remember`` this process saw
  is dropped (``duplicates``). A failed write keeps exactly the rows whose files were not published.
- **Whole files**: batches are buffered as they come and written, concatenated, as one Parquet file per
  (UTC date, agent) every ``flush_rows`` rows or ``flush_s`` seconds, each whole or not at all, on a
  thread (``log`` calls are taken meanwhile).
- **Failing writes** never reach the caller: ``log`` keeps accepting; at most ``max_buffer_rows`` rows are
  held, the oldest beyond dropped (``dropped``); retries back off exponentially (not one per call);
  ``stats().last_error`` says why until a write succeeds. ``flush(timeout_s)`` returns within about
  ``timeout_s``, saying how many rows it could not write.
- **Totals survive a restart** by Ray: a ledger, ``<log root>/_runs/<run id>.json`` (hidden from log
  readers), is rewritten before each write with the files the write will publish; the run id is the actor's,
  which a restart keeps. ``written`` and ``files`` are exact; ``duplicates`` and ``dropped`` as of the last write.
- **Lost when the process dies**: the rows it held (at most ``flush_s`` seconds of traffic while writes
  succeed) and its memory of seen keys, so a transition re-sent after a restart is written again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np
import ray

from actors.telemetry_config import TOTALS, FlushResult, LoggerConfig, LoggerStats
from worldmodel.data import TrajectoryWriter, Transitions, check_writable
from worldmodel.data.writer import AGENT_ID_PATTERN, RunLedger, one_line

log = logging.getLogger(__name__)

__all__ = ["FlushResult", "LoggerConfig", "LoggerStats", "TelemetryLogger"]


@dataclass(frozen=True)
class _Attempt:
    """The outcome of one write attempt (on the writer thread)."""

    rows: int
    files: int
    unwritten: Transitions | None
    error: str | None
    restored: dict[str, int] | None  # the ledger's totals, when this attempt read them


class TelemetryLogger:
    """Buffers served transitions and appends them to a log tree, under the guarantees above."""

    def __init__(self, log_uri: str, env_id: str = "", config: LoggerConfig | None = None, *,
                 run_id: str | None = None, **settings: int | float) -> None:
        """
        Args:
            log_uri: log tree root, local path or URI.
            env_id: environment id stored in every file's metadata.
            config: buffering and retry settings; ``settings`` override single fields (``flush_rows=4``).
            run_id: names the ledger; None: the Ray actor's id (kept across restarts), else a fresh one.

        Raises:
            PermissionError: on a first start, the location cannot be written.
        """
        self.cfg = dataclasses.replace(config or LoggerConfig(), **settings)
        self.writer = TrajectoryWriter(log_uri, env_id=env_id)
        actor_id = _actor_id()
        self.run_id = run_id or actor_id or uuid.uuid4().hex
        self.ledger = RunLedger(self.writer, self.run_id, TOTALS)
        self.totals = dict.fromkeys(TOTALS, 0)
        self.seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._buffer: deque[Transitions] = deque()
        self._buffered = self._in_flight = self._failures = 0
        self.last_error: str | None = None
        self._failing_since: float | None = None
        self._retry_at = self._last_write = time.monotonic()
        self._writing: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._restored = False
        try:
            check_writable(log_uri)
            self._merge(self._read_ledger())
        except (OSError, ValueError) as err:
            if actor_id is None or not _restarted_by_ray():
                raise
            self._failed(one_line(err))  # a restart must not fail: it degrades and retries

    # -- what callers use ---------------------------------------------------------------------
    async def log(self, batch: Transitions) -> int:
        """Buffer B transitions, dropping keys seen before; returns how many were new. Never raises on a
        write failure: a write this call starts is awaited (only this caller waits), its error recorded."""
        if not isinstance(batch, Transitions):
            raise TypeError(f"log takes worldmodel.data.Transitions, got {type(batch).__name__}")
        if self._ticker is None or self._ticker.done():  # done: its event loop ended (plain asyncio.run)
            self._ticker = asyncio.get_running_loop().create_task(self._periodic())
        fresh = self._admit(batch)
        if len(fresh):
            self._buffer.append(fresh)
            self._buffered += len(fresh)
            self._bound()
        if self._buffered >= self.cfg.flush_rows and self._idle and time.monotonic() >= self._retry_at:
            await asyncio.shield(self._start_write())
        return len(fresh)

    async def flush(self, timeout_s: float | None = None) -> FlushResult:
        """Write what is held now, backoff or not: the write in flight, then one attempt at the rest.

        Returns within about ``timeout_s`` (None: no limit); a write still running then goes on.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        before = self.totals["written"]
        for _ in range(2):
            task = self._writing if not self._idle else (
                self._start_write() if self._buffered or not self._restored else None)
            if task is None:
                break
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            done, _ = await asyncio.wait({task}, timeout=left)
            if not done or self.last_error is not None:
                break
        unwritten = self._buffered + self._in_flight
        return FlushResult(self.totals["written"] - before, unwritten, self.last_error if unwritten else None)

    def stats(self) -> LoggerStats:
        retry = None if self.last_error is None else max(self._retry_at - time.monotonic(), 0.0)
        return LoggerStats(**self.totals, buffered=self._buffered + self._in_flight, last_error=self.last_error,
                           failing_since=self._failing_since, retry_in_s=retry, run_id=self.run_id)

    # -- buffering ----------------------------------------------------------------------------
    def _admit(self, batch: Transitions) -> Transitions:
        """The rows of ``batch`` to keep: unseen keys, and rows a file can take."""
        keep = np.zeros(len(batch), dtype=bool)  # (B,)
        for i, key in enumerate(zip(batch.eps_id.tolist(), batch.t.tolist())):
            if key not in self.seen:
                self.seen[key] = None
                keep[i] = True
        self.totals["duplicates"] += int(len(batch) - keep.sum())
        while len(self.seen) > self.cfg.remember:
            self.seen.popitem(last=False)
        # The engine checks agent ids, so this drops rows only when a caller skipped its checks; kept,
        # they would fail every write of the buffer.
        bad_ids = [a for a in set(batch.agent_id.tolist()) if not AGENT_ID_PATTERN.fullmatch(str(a))]
        unfit = keep & np.isnat(batch.timestamp)
        if bad_ids:
            unfit |= keep & np.isin(batch.agent_id, bad_ids)
        if unfit.any():
            self.totals["dropped"] += int(unfit.sum())
            log.warning("dropped %d transitions no log file can take (agent ids %s, or no timestamp)",
                        unfit.sum(), bad_ids[:3])
        return batch.select(np.flatnonzero(keep & ~unfit))

    def _bound(self) -> None:
        """Drop the oldest rows beyond ``max_buffer_rows``."""
        excess = self._buffered - self.cfg.max_buffer_rows
        while excess > 0:
            oldest = self._buffer.popleft()
            if len(oldest) > excess:  # keep its newer rows
                self._buffer.appendleft(oldest.select(np.arange(excess, len(oldest))))
            n = min(len(oldest), excess)
            self._buffered -= n
            self.totals["dropped"] += n
            excess -= n

    # -- writing ------------------------------------------------------------------------------
    @property
    def _idle(self) -> bool:
        """No write in flight (a task of an event loop that has ended counts as done)."""
        return self._writing is None or self._writing.done()

    def _start_write(self) -> asyncio.Task[None]:
        """Start one write attempt of everything buffered (one at a time); returns its task."""
        batches, self._buffer = list(self._buffer), deque()
        self._in_flight, self._buffered = self._buffered, 0
        self._last_write = time.monotonic()
        self._writing = asyncio.get_running_loop().create_task(self._write_buffered(batches))
        return self._writing

    async def _write_buffered(self, batches: list[Transitions]) -> None:
        try:
            ledger = dict(self.totals)  # what the ledger says before this write's files
            attempt = await asyncio.to_thread(self._write, batches, ledger)
        except Exception as err:  # noqa: BLE001 - no thread to write on: keep the rows, record why
            attempt = _Attempt(0, 0, Transitions.concat(batches) if batches else None, one_line(err), None)
        finally:
            self._in_flight, self._writing = 0, None
        if attempt.restored is not None:
            self._merge(attempt.restored)
        self.totals["written"] += attempt.rows
        self.totals["files"] += attempt.files
        if attempt.unwritten is not None and len(attempt.unwritten):
            self._buffer.appendleft(attempt.unwritten)
            self._buffered += len(attempt.unwritten)
            self._bound()
        if attempt.error is None:
            self.last_error, self._failing_since, self._failures = None, None, 0
        else:
            self._failed(attempt.error)

    def _write(self, batches: list[Transitions], ledger: dict[str, int]) -> _Attempt:
        """On the writer thread: the ledger, then each file; stops at the first failure."""
        restored, planned = None, None
        written = files = 0
        try:
            if not self._restored:
                restored = self._read_ledger()
                ledger = {k: v + restored[k] for k, v in ledger.items()}
            batch = Transitions.concat(batches) if batches else None
            planned = self.writer.plan(batch) if batch is not None else []
            # Before any file: a restart then counts whichever of these files were published.
            self.ledger.write(ledger, [(p.path, len(p.rows)) for p in planned])
            for p in planned:
                self.writer.write_file(p)
                written, files = written + len(p.rows), files + 1
            return _Attempt(written, files, None, None, restored)
        # Any failure (OSError, Arrow's errors, a full disk) is recorded and surfaced by stats(); the
        # rows not yet in a published file are kept for the next attempt.
        except Exception as err:  # noqa: BLE001
            rest = batches if planned is None else [p.rows for p in planned[files:]]
            unwritten = Transitions.concat(rest) if rest else None
            return _Attempt(written, files, unwritten, one_line(err), restored)

    def _failed(self, error: str) -> None:
        self._failures += 1
        wait = min(self.cfg.retry_s * 2 ** (self._failures - 1), self.cfg.max_retry_s)
        self._retry_at = time.monotonic() + wait
        self._failing_since = self._failing_since or time.time()
        self.last_error = error
        log.warning("telemetry write failed (%d held, retry in %.0f s): %s", self._buffered, wait, error)

    async def _periodic(self) -> None:
        """Start a write every ``flush_s`` while rows are held, or when the backoff allows; never ends on an error."""
        tick = min(self.cfg.flush_s, self.cfg.retry_s) / 4
        while True:
            await asyncio.sleep(tick)
            try:
                now = time.monotonic()
                due = self._buffered >= self.cfg.flush_rows or now - self._last_write >= self.cfg.flush_s
                if self._buffered and due and self._idle and now >= self._retry_at:
                    self._start_write()
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure; it is logged
                log.exception("telemetry's periodic write could not start")

    def _read_ledger(self) -> dict[str, int]:
        try:
            return self.ledger.read()
        except ValueError as err:  # a malformed ledger must not stop the logs: the totals start again
            log.warning("%s; counting from 0", err)
            return dict.fromkeys(TOTALS, 0)

    def _merge(self, restored: dict[str, int]) -> None:
        for k, v in restored.items():
            self.totals[k] += v
        self._restored = True


def _actor_id() -> str | None:
    """The id of the Ray actor this runs in (the same after a restart); None outside one."""
    if not ray.is_initialized():  # asking for the runtime context would start a Ray
        return None
    return ray.get_runtime_context().get_actor_id()


def _restarted_by_ray() -> bool:
    """Whether Ray restarted the current actor (asks the cluster, so only on the rare path that needs it)."""
    try:
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # noqa: BLE001 - no answer: treat it as a first start, which fails loudly
        return False
