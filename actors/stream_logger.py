"""The telemetry logger of an app on the fleet bus: the telemetry stream into the Arrow logs, as a Ray actor.

One ``IngestConsumer`` (``actors.ingest``) runs on a thread of its own; the methods are the
``TelemetryLogger``'s that the rest of the app uses (``stats``, ``flush``), so health, gauges and
``shutdown_app`` read either logger the same way.

What it guarantees is the ingest consumer's: a row is acknowledged only once its file is published, each
(agent_id, eps_id, t) is written once, and the rows it holds unwritten (``stats().buffered``) are still
pending in Redis: a crash loses none of them. Its consumer name (``<name>-0``) is stable, so the actor Ray
restarts takes its own pending entries back (and the ledger says which of them are already in a file).
Its counts start again from 0 when it restarts; the logs hold every row once either way.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from actors.ingest import IngestConfig, IngestConsumer, IngestStats
from actors.streams import BusNames
from actors.telemetry_config import FlushResult, LoggerStats
from worldmodel.data.writer import one_line

__all__ = ["StreamLogger"]

log = logging.getLogger(__name__)

_RESTART_S = 5.0
"""Pause before the ingest loop starts again after an error it does not retry itself."""


@dataclass
class _FlushCall:
    """A ``flush`` waiting for the ingest thread."""

    timeout_s: float | None
    done: threading.Event = field(default_factory=threading.Event)
    written: int = 0
    error: str | None = None


class StreamLogger:
    """Reads the bus's telemetry stream into ``log_uri`` on a thread, from construction until ``stop``."""

    def __init__(self, redis_url: str, log_uri: str, name: str = "fleetwm-telemetry", prefix: str = "fleetwm",
                 config: IngestConfig | None = None, env_id: str = "") -> None:
        """
        Args:
            redis_url: the fleet bus.
            log_uri: log tree root, local path or URI.
            name: the logger's name; its consumer in the ingest group is ``<name>-0``.
            prefix: the bus's names (``BusNames``): stream, group and dead letters.
            config: flushing and claiming (its stream, group and dead letters are replaced by ``prefix``'s).
            env_id: environment id stored in every file's metadata.
        """
        bus = BusNames(prefix)
        config = dataclasses.replace(config or IngestConfig(), stream=bus.telemetry, group=bus.ingest_group,
                                     dead_letters=bus.telemetry_dead_letters)
        self.consumer = IngestConsumer(redis_url, log_uri, f"{name}-0", config, env_id=env_id)
        self._calls: queue.Queue[_FlushCall] = queue.Queue()
        self._stopping = threading.Event()
        # Started here: the group is created, and the own pending entries taken back, with Redis reachable
        # or, retried with backoff, once it is.
        self._thread = threading.Thread(target=self._ingest, name=f"{name}-ingest", daemon=True)
        self._thread.start()

    def stats(self) -> LoggerStats:
        """The ingest counts as the ``TelemetryLogger`` reports them (``dropped`` is 0: nothing is dropped;
        ``retry_in_s`` None: the thread retries with a backoff of 1 s to 30 s)."""
        s = self.consumer.stats()
        failing = s.failing_since is not None
        return LoggerStats(written=s.written, buffered=s.buffered, duplicates=s.duplicates, files=s.files,
                           dropped=0, last_error=s.last_error if failing else None, failing_since=s.failing_since,
                           retry_in_s=None, run_id=self.consumer.consumer, held_in_stream=True)

    def ingest_stats(self) -> IngestStats:
        return self.consumer.stats()

    def flush(self, timeout_s: float | None = None) -> FlushResult:
        """Write what the stream holds for the group now (entries not yet read included), within about
        ``timeout_s`` (None: no limit); the thread then goes on reading.

        Returns:
            rows written by this flush, rows still held (pending in Redis) and, when some are, why.
        """
        call = _FlushCall(timeout_s)
        if not self._thread.is_alive():
            return FlushResult(0, self.consumer.stats().buffered, "the ingest thread has stopped")
        self._calls.put(call)
        # the thread serves it after its current step: one read (block_ms) and maybe a flush
        wait = None if timeout_s is None else timeout_s + self.consumer.config.block_ms / 1000
        if not call.done.wait(wait):
            error = f"the ingest thread did not flush within {wait:.1f} s"
            last = self.consumer.stats().last_error
            return FlushResult(0, self.consumer.stats().buffered, f"{error} (last error: {last})" if last else error)
        held = self.consumer.stats().buffered
        return FlushResult(call.written, held, call.error if held or call.error else None)

    def stop(self, timeout_s: float = 30.0) -> IngestStats:
        """Stop the thread after a last flush (within about ``timeout_s``); returns the counts."""
        self._stopping.set()
        self.consumer.stop()
        self._thread.join(timeout_s)
        return self.consumer.stats()

    def _ingest(self) -> None:
        """The thread: the consumer's loop, which retries Redis and file errors itself; any other error (a
        malformed ledger, an unreadable log file) is counted and the loop started again after a pause."""
        while not self._stopping.is_set():
            try:
                self.consumer.run(between=self._serve_flushes)
            except Exception as err:  # reported by stats (last_error, failing_since) until a step succeeds
                log.exception("the telemetry ingest loop failed; starting it again in %.0f s", _RESTART_S)
                self.consumer.note_error(err)
                self._stopping.wait(_RESTART_S)

    def _serve_flushes(self) -> None:
        """On the ingest thread, between steps: the waiting ``flush`` calls."""
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            start = time.monotonic()
            try:
                call.written = self.consumer.drain(call.timeout_s)
            except Exception as err:
                call.error = f"{type(err).__name__}: {one_line(err)}"
                raise  # the loop counts it and backs off
            finally:
                call.done.set()
            if call.timeout_s is not None and time.monotonic() - start > call.timeout_s:
                return  # leave the others for the next step
