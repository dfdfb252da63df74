"""The telemetry logger's settings and what it reports: ``LoggerConfig``, ``LoggerStats``, ``FlushResult``.

Plain frozen data with no Ray, so settings can be built and checked where the logger is not hosted;
``actors.telemetry`` (the logger) re-exports all three.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FlushResult", "LoggerConfig", "LoggerStats", "TOTALS"]

TOTALS = ("written", "files", "duplicates", "dropped")
"""The counts a run's ledger keeps (``LoggerStats`` fields)."""


@dataclass(frozen=True)
class LoggerConfig:
    """How the logger buffers, writes and retries."""

    flush_rows: int = 65536
    """Write once this many rows are buffered."""
    flush_s: float = 10.0
    """Write at least this often while rows are buffered (files per agent: one per flush)."""
    remember: int = 1_000_000
    """How many (eps_id, t) keys are remembered to drop duplicates."""
    max_buffer_rows: int = 1_000_000
    """Rows held at most while writes fail (a few hundred MB of Nav2D rows); the oldest beyond are dropped."""
    retry_s: float = 1.0
    """Wait after the first failed write; doubled after each further failure."""
    max_retry_s: float = 60.0
    """Longest wait between retries."""

    def __post_init__(self) -> None:
        for name in ("flush_rows", "remember", "max_buffer_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoggerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.retry_s <= self.max_retry_s or self.flush_s <= 0:
            raise ValueError(f"LoggerConfig needs flush_s > 0 and 0 < retry_s <= max_retry_s, got flush_s="
                             f"{self.flush_s}, retry_s={self.retry_s}, max_retry_s={self.max_retry_s}")


@dataclass(frozen=True)
class LoggerStats:
    """The logger's counts: totals over the run, restarts included once the ledger could be read (see
    ``actors.telemetry``'s module docstring)."""

    written: int
    """Rows published in log files."""
    buffered: int
    """Rows held and not yet written (being written included)."""
    duplicates: int
    """Rows dropped because their (eps_id, t) was seen before."""
    files: int
    """Log files published."""
    dropped: int
    """Rows dropped unwritten: the oldest beyond ``max_buffer_rows``, or rows no file can take."""
    last_error: str | None
    """Why writes are failing, one line; None while they succeed."""
    failing_since: float | None
    """Unix time of the first failure in the current run of failures; None while writes succeed."""
    retry_in_s: float | None
    """Seconds until the next write attempt while failing; None while writes succeed."""
    run_id: str
    """Names this run's ledger; kept across restarts by Ray."""
    held_in_stream: bool = False
    """True when the rows counted in ``buffered`` are still pending in the telemetry stream, so a crash of
    the logger loses none of them (``StreamLogger``); False: held only in the logger's memory."""


@dataclass(frozen=True)
class FlushResult:
    """What a ``flush`` did: rows written during it, rows still held, and why (None when all were written)."""

    written: int
    """Rows published during the flush."""
    unwritten: int
    """Rows still held when it returned (being written included)."""
    error: str | None
    """Why they are held, one line; None when all were written."""
