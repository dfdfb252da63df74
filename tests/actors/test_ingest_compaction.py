"""The ingest consumer's compaction of past days: one file per past day, today's files left alone, every
row still read once."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import numpy as np

from actors.ingest_compaction import CompactPastDays
from tests.actors.test_streams import make_batch
from worldmodel.data import TrajectoryWriter, read_transitions
from worldmodel.data.reader import list_log_files

TODAY = datetime.date(2026, 12, 6)


def _write(root: Path, day: str, seed: int) -> None:
    batch = make_batch(12, seed=seed)
    stamps = np.datetime64(f"{day}T10:00:00") + np.arange(12).astype("timedelta64[ms]")
    writer = TrajectoryWriter(str(root))
    for planned in writer.plan_by_day(dataclasses.replace(batch, timestamp=stamps)):
        writer.write_file(planned)


def test_past_days_are_merged_into_one_file_and_today_is_left_alone(tmp_path: Path) -> None:
    for seed in range(3):
        _write(tmp_path, "2026-12-04", seed)
        _write(tmp_path, "2026-12-06", 10 + seed)
    _write(tmp_path, "2026-12-05", 20)  # one file: nothing to merge
    before = len(read_transitions(str(tmp_path)))
    compactor = CompactPastDays(str(tmp_path))
    merged = compactor.run(today=TODAY)
    assert [c.day for c in merged] == ["2026-12-04"] and len(merged[0].inputs) == 3
    assert len(list_log_files(str(tmp_path / "2026-12-04"))) == 1
    assert len(list_log_files(str(tmp_path / "2026-12-05"))) == 1
    assert len(list_log_files(str(tmp_path / "2026-12-06"))) == 3
    assert len(read_transitions(str(tmp_path))) == before  # every row once
    assert compactor.run(today=TODAY) == []  # nothing left to merge


def test_a_pass_runs_at_most_once_per_period(tmp_path: Path) -> None:
    compactor = CompactPastDays(str(tmp_path), every_s=3600)
    assert compactor.maybe() == [] and compactor._last is not None
    _write(tmp_path, "2020-01-01", 0)
    _write(tmp_path, "2020-01-01", 1)
    assert compactor.maybe() == []  # not due yet
    compactor._last -= 3600
    assert [c.day for c in compactor.maybe()] == ["2020-01-01"]
