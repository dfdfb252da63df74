"""Compaction of past days for the ingest consumer: a file per flush is cheap to write, and one file per day
is cheap to list and read.

Once an hour (``CompactPastDays.maybe``, called from the consumer's loop), every date directory before today
(UTC) that holds more than one live file is merged by ``worldmodel.data.compact.compact``: it publishes the
merged file before deleting its inputs, so readers see each row once at any moment. Today's directory is
left alone (the consumer is writing into it); a late row for a past day lands in a new file there, merged
at the next pass.
"""

from __future__ import annotations

import datetime
import logging
import time

import pyarrow.fs as pafs

from worldmodel.data.compact import DAY_PATTERN, Compaction, compact
from worldmodel.data.writer import resolve_root

logger = logging.getLogger(__name__)

COMPACT_EVERY_S = 3600.0
"""Seconds between passes over the past days."""


class CompactPastDays:
    """Merges the log tree's past days, at most once per ``every_s``."""

    def __init__(self, root: str, every_s: float = COMPACT_EVERY_S) -> None:
        self.root, self.every_s = root, every_s
        self._last: float | None = None

    def maybe(self) -> list[Compaction]:
        """Run a pass when one is due (the first call runs one); returns the days merged."""
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every_s:
            return []
        self._last = now
        return self.run()

    def run(self, today: datetime.date | None = None) -> list[Compaction]:
        """Merge every day before ``today`` (default: today, UTC) that has more than one live file."""
        today = today or datetime.datetime.now(datetime.timezone.utc).date()
        merged = []
        for day in self.days():
            if day >= today.isoformat():
                continue
            if len(compact(self.root, day, dry_run=True).inputs) > 1:
                done = compact(self.root, day, dry_run=False)
                logger.info("compacted %d files of %s into %s", len(done.inputs), day, done.output)
                merged.append(done)
        return merged

    def days(self) -> list[str]:
        """The date directories (YYYY-MM-DD) of the log tree, in order."""
        fs, base = resolve_root(self.root)
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory
                      and DAY_PATTERN.fullmatch(i.base_name))
