"""Drift to retraining: a sustained rise of the served prediction error asks the learner for a retrain.

Each serving engine feeds its ``DriftWatch`` the production version's prediction MSE of every batch. The
watch fires once the row-weighted mean over the last ``window_s`` has stayed above the threshold for
``sustain_s``; the engine then asks the retrain scheduler (``request_drift_retrain``), which alone decides:
it refuses while a retrain runs, more often than once per ``min_interval_s`` (``DriftGate``, across every
replica's watch), or for a version that is no longer production, and otherwise starts a retrain whose
registered version records the cause (``DriftCause.to_trigger``) in its lineage's ``trigger``.

Times are wall-clock seconds (``time.time()``): a cause's ``since`` is read by people, and the scheduler's
``retry_at`` crosses processes.
"""

from __future__ import annotations

import asyncio
import datetime
from collections import deque
from dataclasses import dataclass
from typing import Any

from ray.exceptions import RayError

from actors.common import find_actor
from learners.settings import DriftSettings

TRIGGER_DRIFT, TRIGGER_SCHEDULE, TRIGGER_MANUAL = "drift", "schedule", "manual"
"""What started a retrain: the drift watch, the cron, or a person (``wm learn``, ``run_now``)."""
TRIGGER_KINDS = (TRIGGER_DRIFT, TRIGGER_SCHEDULE, TRIGGER_MANUAL)

STARTED, BUSY, RATE_LIMITED, NOT_PRODUCTION, SKIPPED, FAILED = (
    "started", "busy", "rate_limited", "not_production", "skipped", "failed")
"""What became of a drift retrain request (the ``outcome`` tag of ``fleetwm_drift_retrains_total``): started;
refused because a retrain runs, because one started less than ``min_interval_s`` ago, or because the drifting
version is not production; skipped because no scheduler runs; failed because the scheduler could not be reached."""


def iso(t: float) -> str:
    """Wall-clock seconds as a UTC ISO 8601 time."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")


def check_trigger(trigger: dict[str, Any]) -> dict[str, Any]:
    """``trigger`` if it is a dict whose ``kind`` is one of ``TRIGGER_KINDS``."""
    if not isinstance(trigger, dict) or trigger.get("kind") not in TRIGGER_KINDS:
        raise ValueError(f"a retrain trigger is a dict with 'kind' in {TRIGGER_KINDS}, got {trigger!r}")
    return trigger


@dataclass(frozen=True)
class DriftCause:
    """Why a drift retrain was asked for."""

    version: str
    """The production version whose prediction error rose."""
    mse: float
    """Its windowed mean prediction MSE when the watch fired."""
    threshold: float
    """The threshold that mean stayed above."""
    rows: int
    """Scored transitions in the window."""
    since: float
    """When the windowed mean went above the threshold (wall-clock s)."""
    detected: float
    """When the watch fired (wall-clock s)."""
    window_s: float
    """The rolling mean's range."""

    def to_trigger(self) -> dict[str, Any]:
        """The registry lineage's ``trigger`` (JSON): kind 'drift' and the cause, times in ISO 8601."""
        return {"kind": TRIGGER_DRIFT, "version": self.version, "mse": self.mse, "threshold": self.threshold,
                "rows": self.rows, "since": iso(self.since), "detected": iso(self.detected),
                "window_s": self.window_s}


@dataclass(frozen=True)
class DriftAnswer:
    """The scheduler's answer to a drift retrain request."""

    outcome: str
    """One of the outcomes above (``STARTED``, ``BUSY``, ...)."""
    detail: str
    """A sentence for the logs."""
    retry_at: float | None = None
    """When asking again may succeed (wall-clock s; None: after the watch's ``retry_s``)."""


class DriftWatch:
    """Watches one engine's production prediction MSE and fires on a sustained rise (no Ray, no clock)."""

    def __init__(self, settings: DriftSettings, production: str | None = None) -> None:
        self.settings = settings
        self.production = production
        """The version being served as production; observations of others are ignored."""
        self._version: str | None = None
        self._batches: deque[tuple[float, float, int]] = deque()  # (time, mse * rows, rows)
        self._sum, self._rows = 0.0, 0  # the window's running totals of mse * rows and rows
        self._above_since: float | None = None
        self._pending = False  # fired, and the scheduler has not answered yet
        self._hold_until = float("-inf")

    def windowed(self) -> tuple[float, int]:
        """The window's row-weighted mean MSE (NaN when empty) and its rows."""
        return (self._sum / self._rows if self._rows else float("nan")), self._rows

    def observe(self, version: str, mse: float, rows: int, now: float) -> DriftCause | None:
        """One batch's mean MSE over its ``rows`` scored transitions of ``version``, at ``now``.

        Returns:
            The cause when the watch fires: the windowed mean has stayed above the threshold for
            ``sustain_s``, nothing is pending and no hold (rate limit, retry) is in force; else None.
        """
        if version != self.production or rows < 1:
            return None
        if version != self._version:  # a new production version starts a clean window
            self._version, self._above_since = version, None
            self._batches.clear()
            self._sum, self._rows = 0.0, 0
        s = self.settings
        self._batches.append((now, mse * rows, rows))
        self._sum, self._rows = self._sum + mse * rows, self._rows + rows
        while self._batches[0][0] <= now - s.window_s:
            _, gone, gone_rows = self._batches.popleft()
            self._sum, self._rows = self._sum - gone, self._rows - gone_rows
        mean, window_rows = self.windowed()
        if window_rows < s.min_rows or not mean > s.threshold:
            self._above_since = None
            return None
        if self._above_since is None:
            self._above_since = now
        if now - self._above_since < s.sustain_s or self._pending or now < self._hold_until:
            return None
        self._pending = True
        return DriftCause(version=version, mse=mean, threshold=s.threshold, rows=window_rows,
                          since=self._above_since, detected=now, window_s=s.window_s)

    def settle(self, answer: DriftAnswer, now: float) -> None:
        """The scheduler's answer to the last cause: a started retrain holds the watch for ``min_interval_s``
        (and a rise must then be sustained afresh); any other answer until its ``retry_at`` or ``retry_s``."""
        self._pending = False
        if answer.outcome == STARTED:
            self._hold_until, self._above_since = now + self.settings.min_interval_s, None
        else:
            self._hold_until = answer.retry_at if answer.retry_at is not None else now + self.settings.retry_s


class DriftGate:
    """The scheduler's rate limit on drift retrains: none while a retrain runs, one per ``min_interval_s``."""

    def __init__(self, min_interval_s: float) -> None:
        if not min_interval_s >= 0:
            raise ValueError(f"the drift retrains' min_interval_s must be >= 0 seconds, got {min_interval_s!r}")
        self.min_interval_s = min_interval_s
        self.last_start: float | None = None
        """When the last drift retrain started (wall-clock s), or None."""

    def refusal(self, now: float, running: bool) -> DriftAnswer | None:
        """Why a drift retrain may not start at ``now`` (None: it may)."""
        if running:
            return DriftAnswer(BUSY, "a retrain is running")
        if self.last_start is not None and now < self.last_start + self.min_interval_s:
            until = self.last_start + self.min_interval_s
            return DriftAnswer(RATE_LIMITED, f"a drift retrain started at {iso(self.last_start)}; the next may "
                                             f"start at {iso(until)}", retry_at=until)
        return None

    def started(self, now: float) -> None:
        self.last_start = now


async def request_drift_retrain(cause: DriftCause, scheduler: str) -> DriftAnswer:
    """Ask the retrain scheduler named ``scheduler`` (``wm learn --schedule``) to retrain for ``cause``.

    Returns:
        Its answer; ``SKIPPED`` when no scheduler of that name runs, ``FAILED`` when it could not be reached.
    """
    handle = await asyncio.to_thread(find_actor, scheduler)  # a GCS lookup: off the engine's event loop
    if handle is None:
        return DriftAnswer(SKIPPED, f"no retrain scheduler {scheduler!r} is running (start one with "
                                    "`wm learn --schedule`)")
    try:
        return await handle.drift.remote(cause)
    except RayError as err:  # the engine goes on serving; the outcome is counted and logged
        return DriftAnswer(FAILED, f"retrain scheduler {scheduler!r} did not answer: {err}")
