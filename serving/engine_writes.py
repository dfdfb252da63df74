"""What the engine writes each cycle, and whether it has become durable.

Each cycle makes one telemetry call (the transitions it closed, to ``serving.sinks``'s sink), started beside its
planning (``log``: what a request closes is known before it is planned), and then submits one state write (its
agents' new records), which finishes in the background while the answers travel back. ``settled`` says when
they have finished and whether they succeeded: the stream consumer acknowledges a request only then, so a
request whose effect was lost is delivered again.

A telemetry call that fails keeps its transitions (``held``, at most ``max_held`` rows, the oldest beyond
dropped and counted) and sends them again before the next cycle's: a request answered again from its
record (a re-delivery) closes no transition, so a transition not logged by its own call would be lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable, Coroutine

import numpy as np

from actors.records import AgentRecord
from actors.state_store import AgentStateStore
from serving.sinks import TelemetrySink
from worldmodel.data import Transitions

logger = logging.getLogger("ray.serve")

MAX_HELD_ROWS = 100_000
"""Transitions held for a retry at most (about 10 MB of Nav2D rows; 100 s of a 100-agent fleet at 10 Hz)."""
LOG_WAIT_S = 0.25
"""How long a cycle waits for its telemetry call before it writes its records anyway (see ``submit``)."""
_FAILURES_KEPT = 4096
"""Failed writes remembered for ``settled`` (a caller asks about the writes of its last few cycles)."""


class EngineWrites:
    """The state writes and telemetry calls of an engine, numbered in submission order."""

    def __init__(self, store: AgentStateStore, telemetry: TelemetrySink | None,
                 spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
                 max_held: int = MAX_HELD_ROWS) -> None:
        """``spawn`` runs a coroutine in the background and returns its task (the engine's ``_spawn``)."""
        self.store, self.telemetry, self.spawn, self.max_held = store, telemetry, spawn, max_held
        self.submitted = 0
        """Writes submitted so far; pass it to ``settled`` as ``since`` to ask about later writes only."""
        self.dropped = 0
        """Transitions dropped from the hold (over ``max_held``): never logged."""
        self._pending: dict[int, asyncio.Task[None]] = {}
        self._failed: deque[int] = deque(maxlen=_FAILURES_KEPT)  # numbers of failed state writes
        self._held: list[Transitions] = []
        self._logging: set[asyncio.Task[None]] = set()  # telemetry calls sent in the background (sink failing)
        self._last_sent: asyncio.Future[None] | None = None  # resolved once the last state write is sent
        self._resending = 0  # held rows in a telemetry call now
        self._asked = 0  # the last write a ``settled`` without ``since`` covered

    @property
    def held(self) -> int:
        """Transitions whose telemetry call failed, waiting to be sent again (those being sent included)."""
        return sum(map(len, self._held)) + self._resending

    def log(self, transitions: Transitions | None) -> asyncio.Task[None] | None:
        """Start the telemetry call of ``transitions`` (after what is held) in the background, and return it for
        the cycle's ``submit`` to wait for; None while the sink is failing (transitions held): then nothing
        waits for it."""
        failing = bool(self._held)
        task = self.spawn(self._log(transitions))
        self._logging.add(task)
        task.add_done_callback(self._logging.discard)
        return None if failing else task

    def submit(self, records: list[AgentRecord], logged: asyncio.Task[None] | None) -> None:
        """Send the state write once the cycle's telemetry call ``logged`` (``log``) has finished, in the
        background; ``ordered`` waits until the state write is sent (the engine's answers leave then).

        The transitions go first: a replica that dies between the two leaves its agents' records as they
        were, so the re-delivered requests are planned again and close the same transitions again (the logs
        keep each (agent, episode, step) once); in the other order they would be answered from the new
        records and close nothing, and the transitions would be lost. The wait is bounded
        (``LOG_WAIT_S``) and skipped while the sink is failing (transitions held): a slow or unreachable
        sink then holds up no cycle, and only a replica dying in that time can lose its held transitions.
        """
        self.submitted += 1
        number = self.submitted
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = self.spawn(self._write(number, records, logged, sent))
        self._pending[number] = task
        task.add_done_callback(lambda _: self._pending.pop(number, None))
        self._last_sent = sent

    async def ordered(self) -> None:
        """Wait until the state write of the last ``submit`` has been sent: calls from one process to one actor
        run in the order sent, so what is read from the shards after this includes it."""
        if self._last_sent is not None:
            await asyncio.shield(self._last_sent)

    async def settled(self, since: int | None = None) -> bool:
        """Wait for every write submitted so far; True when those after write ``since`` (None: after the
        writes the previous call without ``since`` covered) succeeded and no transition is held.

        A held transition is sent once more here first. A write of another caller (the HTTP path) that
        failed in the range makes this False too: the caller then has a request delivered again, which is
        answered from its record, never planned twice.
        """
        upto = self.submitted
        if since is None:
            since, self._asked = self._asked, max(self._asked, upto)
        waiting = [task for number, task in self._pending.items() if number <= upto]
        await asyncio.gather(*waiting, *self._logging, return_exceptions=True)
        if self._held:
            await self._log(None)
        return self.held == 0 and not any(since < number <= upto for number in self._failed)

    async def _write(self, number: int, records: list[AgentRecord], logged: asyncio.Task[None] | None,
                     sent: asyncio.Future[None]) -> None:
        try:
            if logged is not None:
                try:  # cancelled when it runs out: its transitions are held (``_log``)
                    await asyncio.wait_for(logged, LOG_WAIT_S)
                except asyncio.TimeoutError:
                    logger.warning("telemetry call slower than %.2f s: its transitions are held for the next",
                                   LOG_WAIT_S)
            put = self.store.submit_put(records)
        finally:  # cancelled (the replica stops): nothing written, and nobody waits for it
            sent.set_result(None)
        try:
            await put
        except Exception as err:  # the request is delivered again (stream) or retried (HTTP)
            self._failed.append(number)
            logger.error("writing %d agent records failed: %s", len(records), err)

    async def _log(self, transitions: Transitions | None) -> None:
        """Send the held transitions and ``transitions`` in one call; hold them all again if it fails."""
        if self.telemetry is None:
            return
        held, self._held = self._held, []
        parts = held + ([transitions] if transitions is not None and len(transitions) else [])
        if not parts:
            return
        batch = parts[0] if len(parts) == 1 else Transitions.concat(parts)
        resending = len(batch) - (len(parts[-1]) if parts[-1] is transitions else 0)
        self._resending += resending
        try:
            await self.telemetry.log(batch)
        except asyncio.CancelledError:  # the wait for it ran out (``submit``): sent again with the next call
            self._hold(batch)
            raise
        except Exception as err:  # kept for the next call; the logs drop any copy that did arrive
            self._hold(batch)
            logger.error("logging %d transitions failed, held for the next call: %s", len(batch), err)
        finally:
            self._resending -= resending

    def _hold(self, batch: Transitions) -> None:
        self._held.append(batch)
        excess = sum(map(len, self._held)) - self.max_held
        if excess > 0:
            merged = Transitions.concat(self._held)
            self._held = [merged.select(np.arange(excess, len(merged)))]
            self.dropped += excess
            logger.error("dropped the %d oldest of the transitions held for a retry (more than %d)",
                         excess, self.max_held)
