"""Telemetry logger: the fleet's served transitions, appended to the Arrow logs in batches, each exactly once.

Serving closes an agent's previous transition when its next request arrives (the
new observation and the reward of the last action). Those rows come here, are
buffered, and are written as whole Parquet files (atomic, see ``TrajectoryWriter``)
every ``flush_rows`` rows or ``flush_s`` seconds, whichever comes first.

Files are laid out per (date, agent) like every log, so each flush writes one file per agent
seen since the last: flush rarely enough that a day of fleet traffic stays a manageable number
of files for the learners (the defaults: every 10 s or 65,536 rows).

A transition is identified by (episode id, step); a key seen before is dropped,
so a retried request whose transition reaches the logger twice is written once.
Rows buffered but not yet flushed are lost if the logger process dies: at most
``flush_s`` seconds of telemetry, never a half-written file, never a duplicate.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from actors.common import Rows, unpack_rows
from worldmodel.data import TrajectoryWriter, Transitions

Row = dict[str, Any]
"""One transition: obs, action, reward, new_obs, terminated, truncated, eps_id, agent_id, t, model_version."""


class TelemetryLogger:
    """Buffers served transitions and appends them to a log tree (hosted as an async Ray actor)."""

    def __init__(self, log_uri: str, env_id: str = "", flush_rows: int = 65536, flush_s: float = 10.0,
                 remember: int = 1_000_000) -> None:
        self.writer = TrajectoryWriter(log_uri, env_id=env_id)
        self.flush_rows, self.flush_s, self.remember = flush_rows, flush_s, remember
        self.buffer: list[Row] = []
        self.seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.written = self.duplicates = self.files = 0
        self._task: asyncio.Task[None] | None = None
        self._last_flush = time.monotonic()

    async def log(self, rows: Sequence[Row]) -> int:
        """Buffer rows, dropping any already seen; returns how many were new."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._periodic())
        fresh = 0
        for row in rows:
            key = (str(row["eps_id"]), int(row["t"]))
            if key in self.seen:
                self.duplicates += 1
                continue
            self.seen[key] = None
            if len(self.seen) > self.remember:
                self.seen.popitem(last=False)
            self.buffer.append(row)
            fresh += 1
        if len(self.buffer) >= self.flush_rows:
            self.flush()
        return fresh

    async def log_columns(self, rows: Rows) -> int:
        """``log`` of rows sent as columns (``actors.common.pack_rows``), as the fleet endpoint sends them."""
        return await self.log(unpack_rows(rows))

    def flush(self) -> int:
        """Write the buffer now; returns rows written."""
        rows, self.buffer = self.buffer, []
        self._last_flush = time.monotonic()
        if not rows:
            return 0
        batch = Transitions.build(
            obs=np.stack([r["obs"] for r in rows]), actions=np.stack([r["action"] for r in rows]),
            rewards=np.array([r["reward"] for r in rows]), new_obs=np.stack([r["new_obs"] for r in rows]),
            terminateds=np.array([r["terminated"] for r in rows]), truncateds=np.array([r["truncated"] for r in rows]),
            eps_id=[r["eps_id"] for r in rows], agent_id=[r["agent_id"] for r in rows],
            t=np.array([r["t"] for r in rows]), model_version=[r["model_version"] for r in rows])
        try:
            self.files += len(self.writer.write(batch))
        except BaseException:
            self.buffer = rows + self.buffer  # not written: keep them for the next flush
            raise
        self.written += len(rows)
        return len(rows)

    def stats(self) -> dict[str, Any]:
        return {"written": self.written, "buffered": len(self.buffer), "duplicates": self.duplicates,
                "files": self.files}

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s / 4)
            if self.buffer and time.monotonic() - self._last_flush >= self.flush_s:
                self.flush()
