"""Compaction: merge one day's small log files into one, so a fleet's ingest (a file per flush) stays cheap to list.

The merged file ``<root>/<day>/compact-*.parquet`` lists the files it replaces in its metadata and is
published atomically before they are deleted. ``list_log_files`` skips a listed file while it remains, so
a reader listing at any moment (before, between, after, or after a crash between the two steps) sees each
row exactly once. A reader that listed before the merged file appeared and opens an input after its
deletion fails with FileNotFoundError rather than reading rows twice; compact past days to avoid that.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from worldmodel.data import schema as sc
from worldmodel.data.reader import (COMPACT_PREFIX, META_REPLACES, check_log_files, fill_added_columns,
                                    list_log_files, read_env_id, replaced_files)
from worldmodel.data.writer import COMPRESSION, _write_local_atomic, is_local, publish_bytes, resolve_root

DAY_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Compaction:
    """What ``compact`` merged (or, in a dry run, would merge) for one day."""

    day: str
    """The UTC date directory, YYYY-MM-DD."""
    inputs: tuple[str, ...]
    """The day's live files merged (paths in the log tree's filesystem)."""
    leftovers: tuple[str, ...]
    """Files an earlier compaction replaced that were still present (deleted now)."""
    rows: int
    """Rows in the merged file (the inputs' total)."""
    output: str | None
    """The merged file; None in a dry run or when there was nothing to merge."""
    dry_run: bool

    def to_dict(self) -> dict[str, object]:
        return {"day": self.day, "inputs": len(self.inputs), "leftovers": len(self.leftovers), "rows": self.rows,
                "output": self.output, "dry_run": self.dry_run}


def compact(root: str, day: str, *, dry_run: bool = True, filesystem: pafs.FileSystem | None = None) -> Compaction:
    """Merge the day's log files (both layouts, earlier merged files included) into one file.

    Files are streamed one at a time into the merged file, so memory holds one input, not the day.

    Args:
        root: the log tree's root (local path or URI).
        day: UTC date, YYYY-MM-DD.
        dry_run: only report what would be merged (the default: compaction deletes files).

    Raises:
        ValueError: ``day`` is not YYYY-MM-DD. SchemaError: a file does not match the trajectory schema.
    """
    if not DAY_PATTERN.fullmatch(day):
        raise ValueError(f"day {day!r} is not a UTC date YYYY-MM-DD")
    fs, base = resolve_root(root, filesystem)
    directory = f"{base}/{day}"
    live = list_log_files(directory, fs)
    listed = _all_parquet(fs, directory)
    leftovers = tuple(sorted(set(listed) - set(live)))
    fragments, obs_dim, act_dim = check_log_files(live, fs) if live else ([], 0, 0)
    rows = sum(f.count_rows() for f in fragments)
    if dry_run or (len(live) <= 1 and not leftovers):
        return Compaction(day, tuple(live), leftovers, rows, None, dry_run)
    # Everything ever merged into this day stays listed, so an input left over by a crash stays hidden.
    names = sorted({_relative(p, directory) for p in live} | {_relative(p, directory) for p in leftovers}
                   | {_relative(p, directory) for p in replaced_files(fs, [p for p in live if _is_compacted(p)])})
    output = f"{directory}/{COMPACT_PREFIX}{_stamp()}-{uuid.uuid4().hex}.parquet"
    schema = sc.trajectory_schema(obs_dim, act_dim, read_env_id(directory, fs, files=live))
    schema = schema.with_metadata({**schema.metadata, META_REPLACES: json.dumps(names).encode()})
    _write_merged(fs, output, schema, fragments)
    for path in (*live, *leftovers):
        fs.delete_file(path)
    return Compaction(day, tuple(live), leftovers, rows, output, dry_run)


def _write_merged(fs: pafs.FileSystem, output: str, schema: pa.Schema, fragments: list[ds.ParquetFileFragment]) -> None:
    """Publish one file holding every fragment's rows, atomically (see ``writer.publish_bytes``)."""

    def write(sink: object) -> None:
        with pq.ParquetWriter(sink, schema, compression=COMPRESSION) as out:
            for fragment in fragments:
                # Scanning with the expected schema converts version 1 timestamps and Parquet's list names;
                # columns an older version lacks come back null and take the value older rows read as.
                table = ds.FileSystemDataset([fragment], schema=schema, format=ds.ParquetFileFormat(),
                                             filesystem=fs).to_table(columns=list(sc.COLUMNS))
                out.write_table(fill_added_columns(table).cast(schema))

    if is_local(fs):
        _write_local_atomic(output, write)
        return
    buffer = pa.BufferOutputStream()
    write(buffer)
    publish_bytes(fs, output, buffer.getvalue())


def _all_parquet(fs: pafs.FileSystem, directory: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(directory, recursive=True, allow_not_found=True))
    visible = [i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
    return [p for p in visible if not any(part.startswith((".", "_")) for part in _relative(p, directory).split("/"))]


def _relative(path: str, directory: str) -> str:
    return path[len(directory) + 1:] if path.startswith(directory + "/") else path


def _is_compacted(path: str) -> bool:
    return path.rsplit("/", 1)[-1].startswith(COMPACT_PREFIX)


def _stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
