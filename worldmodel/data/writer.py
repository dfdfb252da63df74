"""Append transitions to a trajectory log tree: ``<root>/<YYYY-MM-DD>/<agent_id>/part-*.parquet``.

Each file appears whole or not at all, so a reader running beside a writer (or
after a crash) never sees a half-written file under a visible name.
"""

from __future__ import annotations

import datetime
import os
import re
import uuid
from typing import BinaryIO, Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from worldmodel.data.batch import Transitions

AGENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""Agent ids become directory names: no separators, no leading dot or underscore (hidden to readers)."""

COMPRESSION = "zstd"

# pyarrow.dataset skips basenames starting with "." or "_" (its ``ignore_prefixes``
# default), and so does ``list_log_files``: temp files get this prefix.
TEMP_PREFIX = "."


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
    if not isinstance(agent_id, str) or not AGENT_ID_PATTERN.match(agent_id):
        raise ValueError(
            f"agent_id {agent_id!r} cannot be used as a log directory name; "
            f"expected a string matching {AGENT_ID_PATTERN.pattern}"
        )
    return agent_id


class TrajectoryWriter:
    """Appends Transitions to a log tree, one Parquet file per (UTC date, agent) per call."""

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

    def write(self, transitions: Transitions) -> list[str]:
        """Append B transitions; rows are grouped by (UTC date of timestamp, agent_id).

        Each file is published atomically, but a write of several groups is not: if
        the third file fails, the first two stay (readers see complete files only).

        Args:
            transitions: B rows; B == 0 writes nothing.

        Returns:
            Paths (within ``self.filesystem``) of the files written, one per group.
        """
        if len(transitions) == 0:
            return []
        # set() runs in C; a per-row Python regex would be slow on large batches.
        for agent_id in set(transitions.agent_id.tolist()):
            check_agent_id(agent_id)
        if np.isnat(transitions.timestamp).any():
            bad = int(np.flatnonzero(np.isnat(transitions.timestamp))[0])
            raise ValueError(f"timestamp of row {bad} is NaT; every row needs a UTC time to pick its date directory")

        days = transitions.timestamp.astype("datetime64[D]")  # (B,)
        day_values, day_code = np.unique(days, return_inverse=True)
        agent_values, agent_code = np.unique(transitions.agent_id, return_inverse=True)
        key = day_code.reshape(-1) * len(agent_values) + agent_code.reshape(-1)  # (B,)
        keys, group = np.unique(key, return_inverse=True)
        order = np.argsort(group.reshape(-1), kind="stable")  # rows grouped, original order kept inside a group
        bounds = np.searchsorted(group.reshape(-1)[order], np.arange(len(keys) + 1))

        paths = []
        for g, k in enumerate(keys):
            day = str(day_values[k // len(agent_values)])  # "YYYY-MM-DD"
            agent_id = agent_values[k % len(agent_values)]
            part = transitions.select(order[bounds[g] : bounds[g + 1]])
            paths.append(self._write_file(part.to_table(self.env_id), f"{self.root}/{day}/{agent_id}"))
        return paths

    def _write_file(self, table: pa.Table, directory: str) -> str:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"part-{stamp}-{uuid.uuid4().hex}.parquet"
        path = f"{directory}/{name}"
        if self._local:
            _write_local_atomic(path, lambda f: pq.write_table(table, f, compression=COMPRESSION))
        else:
            _write_object(self.filesystem, table, path)
        return path


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
