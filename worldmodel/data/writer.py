"""Append transitions to a trajectory log tree, in one of two layouts readers read alike:
per agent, ``<root>/<YYYY-MM-DD>/<agent_id>/part-*.parquet`` (``plan``), or for a fleet's ingest,
``<root>/<YYYY-MM-DD>/part-*.parquet`` with the agent a column, one file per flush and day (``plan_by_day``).

Each file appears whole or not at all, so a reader running beside a writer (or
after a crash) never sees a half-written file under a visible name. A long-running writer (the
telemetry logger) keeps its totals in a ``RunLedger`` under ``<root>/_runs/``, which readers skip.
``check_writable`` probes a location before anything is started that would log there.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Callable, Union

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from worldmodel.data.batch import Transitions

if TYPE_CHECKING:  # images.py imports this module
    from worldmodel.data.images import ImageTransitions

LogRows = Union[Transitions, "ImageTransitions"]
"""What the writer writes: vector transitions, or transitions with camera frames (an image log)."""

AGENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""Agent ids become directory names: no separators, no leading dot or underscore (hidden to readers)."""

COMPRESSION = "zstd"

# pyarrow.dataset skips basenames starting with "." or "_" (its ``ignore_prefixes``
# default), and so does ``list_log_files``: temp files get this prefix.
TEMP_PREFIX = "."

LEDGER_DIR = "_runs"
"""Under a log root, the ``RunLedger`` files (not logs: the "_" hides them from readers)."""


def resolve_root(root: str, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path within it for a log root.

    Args:
        root: a local path, or a URI pyarrow understands (``s3://``, ``gs://``, ``file://``).
        filesystem: an explicit filesystem; ``root`` is then a plain path inside it.

    Returns:
        ``(filesystem, path)`` with no trailing slash on ``path``.
    """
    has_scheme = "://" in root
    if filesystem is not None:
        if has_scheme:
            raise ValueError(f"root {root!r} is a URI but a filesystem was also given; pass one or the other")
        path = root
    elif has_scheme:
        filesystem, path = pafs.FileSystem.from_uri(root)
    else:
        filesystem, path = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(root))
    path = path.rstrip("/") or "/"
    return filesystem, path


def is_local(filesystem: pafs.FileSystem) -> bool:
    """True for the plain local filesystem, where ``os.replace`` gives atomic publication."""
    return filesystem.type_name == "local"


def check_agent_id(agent_id: object) -> str:
    """The agent id unchanged, or ValueError when it cannot be a directory name."""
    if not isinstance(agent_id, str) or not AGENT_ID_PATTERN.fullmatch(agent_id):
        raise ValueError(
            f"agent_id {agent_id!r} cannot be used as a log directory name; "
            f"expected a string matching {AGENT_ID_PATTERN.pattern}"
        )
    return agent_id


class TrajectoryWriter:
    """Appends Transitions (or ImageTransitions) to a log tree, one Parquet file per (UTC date, agent) per call."""

    def __init__(self, root: str, env_id: str = "", filesystem: pafs.FileSystem | None = None) -> None:
        """
        Args:
            root: log tree root, local path or URI (see ``resolve_root``).
            env_id: environment id stored in every file's schema metadata.
            filesystem: explicit filesystem; ``root`` is then a path inside it.
        """
        self.filesystem, self.root = resolve_root(root, filesystem)
        self.env_id = env_id
        self._local = is_local(self.filesystem)

    def write(self, transitions: LogRows) -> list[str]:
        """Append B transitions; rows are grouped by (UTC date of timestamp, agent_id).

        Each file is published atomically, but a write of several groups is not: if
        the third file fails, the first two stay (readers see complete files only).
        A caller that must know which rows were written writes ``plan``'s files one by one.

        Args:
            transitions: B rows; B == 0 writes nothing.

        Returns:
            Paths (within ``self.filesystem``) of the files written, one per group.
        """
        return [self.write_file(planned) for planned in self.plan(transitions)]

    def plan(self, transitions: LogRows) -> list[PlannedFile]:
        """The files ``write`` would write for these B rows, with their final paths; nothing is written.

        Raises:
            ValueError: an agent id that cannot be a directory name, or a row without a timestamp.
        """
        if len(transitions) == 0:
            return []
        # set() runs in C; a per-row Python regex would be slow on large batches.
        for agent_id in set(transitions.agent_id.tolist()):
            check_agent_id(agent_id)
        _check_timestamps(transitions)
        days = transitions.timestamp.astype("datetime64[D]")  # (B,)
        day_values, day_code = np.unique(days, return_inverse=True)
        agent_values, agent_code = np.unique(transitions.agent_id, return_inverse=True)
        key = day_code.reshape(-1) * len(agent_values) + agent_code.reshape(-1)  # (B,)
        keys, group = np.unique(key, return_inverse=True)
        order = np.argsort(group.reshape(-1), kind="stable")  # rows grouped, original order kept inside a group
        bounds = np.searchsorted(group.reshape(-1)[order], np.arange(len(keys) + 1))

        planned = []
        for g, k in enumerate(keys):
            day = str(day_values[k // len(agent_values)])  # "YYYY-MM-DD"
            agent_id = agent_values[k % len(agent_values)]
            rows = transitions.select(order[bounds[g] : bounds[g + 1]])
            planned.append(PlannedFile(f"{self.root}/{day}/{agent_id}/{_file_name()}", rows))
        return planned

    def plan_by_day(self, transitions: LogRows) -> list[PlannedFile]:
        """The fleet layout's files for these B rows: one per UTC date, ``<root>/<YYYY-MM-DD>/part-*.parquet``,
        with the agent a column (at 100 agents and a 10 s flush, one file per agent would be 864,000 a day).

        Raises:
            ValueError: a row without a timestamp.
        """
        if len(transitions) == 0:
            return []
        _check_timestamps(transitions)
        days = transitions.timestamp.astype("datetime64[D]")  # (B,)
        if (days == days[0]).all():  # the usual flush: no copy
            return [PlannedFile(f"{self.root}/{days[0]}/{_file_name()}", transitions)]
        return [PlannedFile(f"{self.root}/{day}/{_file_name()}", transitions.select(days == day))
                for day in np.unique(days)]

    def write_file(self, planned: PlannedFile, metadata: dict[bytes, bytes] | None = None) -> str:
        """Publish one planned file atomically, with ``metadata`` added to its schema's; returns its path."""
        table = planned.rows.to_table(self.env_id)
        if metadata:
            table = table.replace_schema_metadata({**table.schema.metadata, **metadata})
        if self._local:
            _write_local_atomic(planned.path, lambda f: pq.write_table(table, f, compression=COMPRESSION))
        else:
            _write_object(self.filesystem, table, planned.path)
        return planned.path


@dataclass(frozen=True)
class PlannedFile:
    """One log file to write: its final path (within the writer's filesystem) and its rows."""

    path: str
    rows: LogRows


def _check_timestamps(transitions: LogRows) -> None:
    if np.isnat(transitions.timestamp).any():
        bad = int(np.flatnonzero(np.isnat(transitions.timestamp))[0])
        raise ValueError(f"timestamp of row {bad} is NaT; every row needs a UTC time to pick its date directory")


def _file_name() -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"part-{stamp}-{uuid.uuid4().hex}.parquet"


def check_writable(uri: str, filesystem: pafs.FileSystem | None = None) -> None:
    """Check that logs can be written under ``uri``: make the directory, create a hidden probe file in it
    and delete it. Meant to run before starting anything that would log there.

    Raises:
        ValueError: ``uri`` is not a path or URI pyarrow can open.
        PermissionError: the location cannot be written; the message names it and says why, on one line.
    """
    try:
        fs, path = resolve_root(uri, filesystem)
    except (ValueError, pa.ArrowException) as e:  # an unknown scheme or a malformed URI
        raise ValueError(f"log location {uri!r} is not a local path or a URI pyarrow can open: {one_line(e)}") from e
    probe = f"{path}/{TEMP_PREFIX}fleetwm-write-probe-{uuid.uuid4().hex}"
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as out:
            out.write(b"fleetwm")
        fs.delete_file(probe)
    except (OSError, pa.ArrowException) as e:
        raise PermissionError(f"cannot write logs under {uri!r}: {one_line(e)}") from e


def one_line(error: BaseException) -> str:
    """An error as one line of text (its message with whitespace collapsed, or its type's name)."""
    return " ".join(str(error).split()) or type(error).__name__


class RunLedger:
    """A writing run's totals beside its logs, ``<root>/_runs/<run id>.json`` ("_": log readers skip it),
    with the files its last write was publishing, so the totals survive the writer's process."""

    def __init__(self, writer: TrajectoryWriter, run_id: str, keys: tuple[str, ...]) -> None:
        self.fs, self.keys, self.run_id = writer.filesystem, keys, run_id
        self.path = f"{writer.root}/{LEDGER_DIR}/{run_id}.json"

    def read(self) -> dict[str, int]:
        """The run's totals so far (zeros for a new run), with its last write's files (``written`` rows and
        ``files``) counted where they were published.

        Raises:
            OSError: the ledger cannot be read; ValueError: it is malformed (the message names it).
        """
        if self.fs.get_file_info(self.path).type != pafs.FileType.File:
            return dict.fromkeys(self.keys, 0)
        with self.fs.open_input_stream(self.path) as f:
            text = f.read()
        try:
            ledger = json.loads(text)
            totals = {k: int(ledger[k]) for k in self.keys}
            pending = [(str(path), int(rows)) for path, rows in ledger["pending"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"run ledger {self.path} is malformed ({one_line(e)}); expected the keys "
                             f"{', '.join(self.keys)} and 'pending'") from e
        for path, rows in pending:
            if self.fs.get_file_info(path).type == pafs.FileType.File:
                totals["written"] += rows
                totals["files"] += 1
        return totals

    def write(self, totals: dict[str, int], pending: list[tuple[str, int]]) -> None:
        """Record the totals before a write, and the (path, rows) of each file that write will publish."""
        body = json.dumps({**totals, "pending": pending, "run_id": self.run_id}).encode()
        publish_bytes(self.fs, self.path, body)


def _write_local_atomic(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Publish ``path`` whole or not at all: ``write`` fills a hidden temp file beside it, which is
    fsynced and renamed over ``path``; then the directory is fsynced."""
    directory, name = os.path.split(path)
    created = not os.path.isdir(directory)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f"{TEMP_PREFIX}{name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Clean up our own temp file, then let the original error propagate.
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    # The rename is durable only once the directory entry is on disk; new directories (a log
    # tree's date and agent directories) likewise need their parents' entries synced.
    _fsync_dir(directory)
    if created:
        _fsync_dir(os.path.dirname(directory))
        _fsync_dir(os.path.dirname(os.path.dirname(directory)))


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_object(filesystem: pafs.FileSystem, table: pa.Table, path: str) -> None:
    """Serialise the file in memory, then publish it with ``publish_bytes``.

    Closing an Arrow object-store stream (even on error) completes the upload: a writer
    failing half-way through ``write_table`` would otherwise publish a torn file.
    """
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=COMPRESSION)
    publish_bytes(filesystem, path, sink.getvalue())


def publish_bytes(filesystem: pafs.FileSystem, path: str, data: bytes | pa.Buffer) -> None:
    """Make ``data`` the whole content of ``path``, atomically: readers see the old file or the new one.

    Locally: a hidden temp file beside ``path``, fsync, rename over it, fsync the directory.
    Object stores (S3, GCS, Azure) publish an object only when its upload completes, so one
    put is already atomic there; a temp-then-rename would be a copy plus delete, slower and
    not atomic.
    """
    if is_local(filesystem):
        _write_local_atomic(path, lambda f: f.write(data))
        return
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as out:
        out.write(data)


def write_transitions(root: str, transitions: Transitions, env_id: str = "") -> list[str]:
    """Append transitions to the log tree at ``root``; see ``TrajectoryWriter.write``."""
    return TrajectoryWriter(root, env_id=env_id).write(transitions)
