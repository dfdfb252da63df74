"""Read a trajectory log tree back into Transitions, checking every file's schema first.

Dimensions: ``B`` transitions, ``S`` observation size, ``A`` action size.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from worldmodel.data import schema as sc
from worldmodel.data.batch import Transitions
from worldmodel.data.writer import resolve_root

_HASH_CHUNK = 1 << 20
_HIDDEN_PREFIXES = (".", "_")

COMPACT_PREFIX = "compact-"
"""Basename prefix of a file that ``worldmodel.data.compact`` merged from others."""
META_REPLACES = b"fleetwm.replaces"
"""A compacted file's metadata: JSON list of the files it replaces, relative to its own directory."""


class SchemaError(ValueError):
    """A log file does not match the trajectory schema; the message names the file and the column."""


def list_log_files(root: str, filesystem: pafs.FileSystem | None = None) -> list[str]:
    """All ``*.parquet`` files under ``root``, recursively, sorted.

    Files or directories whose name starts with "." or "_" (temp files, Spark/Hive
    markers) are skipped, matching pyarrow.dataset's ``ignore_prefixes`` default, and so are files a
    compacted file replaces (compaction publishes the merged file before deleting its inputs).

    Returns:
        Paths within the resolved filesystem; [] when ``root`` is missing or empty.
    """
    fs, base = resolve_root(root, filesystem)
    return _list(fs, base)


def _list(fs: pafs.FileSystem, base: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    paths = []
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        relative = _relative(info.path, base)
        if any(part.startswith(_HIDDEN_PREFIXES) for part in relative.split("/")):
            continue
        paths.append(info.path)
    replaced = replaced_files(fs, [p for p in paths if p.rsplit("/", 1)[-1].startswith(COMPACT_PREFIX)])
    return sorted(p for p in paths if p not in replaced)


def replaced_files(fs: pafs.FileSystem, compacted: list[str]) -> set[str]:
    """The paths the ``compacted`` files list as replaced (whether or not they still exist).

    Raises:
        SchemaError: a compacted file cannot be read or its list is malformed, naming the file.
    """
    replaced: set[str] = set()
    for path in compacted:
        try:
            metadata = ds.ParquetFileFormat().make_fragment(path, filesystem=fs).physical_schema.metadata or {}
            names = json.loads(metadata.get(META_REPLACES, b"[]"))
        except (pa.ArrowInvalid, OSError, ValueError) as e:
            raise SchemaError(f"{path}: cannot read the list of files it replaces ({e})") from e
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SchemaError(f"{path}: metadata {META_REPLACES.decode()!r} must be a JSON list of file names")
        directory = path.rsplit("/", 1)[0]
        replaced.update(f"{directory}/{name}" for name in names)
    return replaced


def _relative(path: str, base: str) -> str:
    prefix = base if base.endswith("/") else base + "/"
    if not path.startswith(prefix):
        raise ValueError(f"listed file {path!r} is not under the root {base!r}")
    return path[len(prefix) :]


def require_log_files(root: str, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str, list[str]]:
    """The log files under ``root``, as ``list_log_files`` lists them, or an error when there are none.

    Returns:
        ``(filesystem, base, files)``: the resolved filesystem, ``root``'s path in it, and the sorted files.

    Raises:
        FileNotFoundError: no log files under ``root``.
    """
    fs, base = resolve_root(root, filesystem)
    files = _list(fs, base)
    if not files:
        raise FileNotFoundError(f"no trajectory logs under {root!r} (no *.parquet files in {base!r})")
    return fs, base, files


def read_transitions(root: str, filesystem: pafs.FileSystem | None = None, *,
                     files: list[str] | None = None) -> Transitions:
    """Read every log file under ``root``.

    Every file's schema is checked before any data is read, so a bad file fails
    fast with its name instead of surfacing as a cast error deep in a scan.
    ``files``: ``root``'s files as ``require_log_files`` returns them, when the caller has listed them already.

    Returns:
        B transitions sorted by (agent_id, eps_id, t, timestamp), independent of file order.

    Raises:
        FileNotFoundError: no log files under ``root``.
        SchemaError: a file is not Parquet or does not match the trajectory schema.
    """
    fs, _ = resolve_root(root, filesystem)
    files = files or require_log_files(root, filesystem)[2]
    fragments, obs_dim, act_dim = check_log_files(files, fs)
    expected = sc.trajectory_schema(obs_dim, act_dim)
    # Scanning with the expected schema drops unknown extra columns, renames the list child field
    # ("element" in Parquet) back to Arrow's "item", casts version 1's timestamps to int64 microseconds
    # and reads a column an older version lacks as nulls (``transitions_from_table`` fills them).
    dataset = ds.FileSystemDataset(fragments, schema=expected, format=ds.ParquetFileFormat(), filesystem=fs)
    return transitions_from_table(dataset.to_table(columns=list(sc.COLUMNS)), root)


def check_log_files(files: list[str], filesystem: pafs.FileSystem, *,
                    frames: bool = False) -> tuple[list[ds.ParquetFileFragment], int, int]:
    """Check every file's schema (footers only, no data read); returns its fragments and the shared (S, A).

    ``frames``: the caller reads camera frames (``worldmodel.data.images``), so accept files that hold them,
    with S = 0 for those without ``OBS`` and ``NEW_OBS``; otherwise such files are refused, so that nothing
    drops the frames of an image log unawares.

    Raises:
        SchemaError: a file is not Parquet or does not match the trajectory schema, naming the file.
    """
    fmt = ds.ParquetFileFormat()
    # Fragments cache the footer they read for the check, so a scan of them does not re-read it.
    fragments = [fmt.make_fragment(path, filesystem=filesystem) for path in files]
    obs_dim, act_dim = _check_schemas(files, fragments, frames)
    return fragments, obs_dim, act_dim


def transitions_from_table(table: pa.Table, where: str) -> Transitions:
    """A table of the schema's columns as Transitions sorted by (agent_id, eps_id, t, timestamp).

    Columns older schema versions lack may be missing or null: they read as ``sc.ADDED_COLUMNS`` says, and
    ``sc.NULLABLE_COLUMNS`` as unknown.

    Raises:
        SchemaError: a column has null values (``where`` names the logs in the message).
    """
    return Transitions.from_table(sorted_log_table(table, where))


def sorted_log_table(table: pa.Table, where: str) -> pa.Table:
    """``table`` with ``sc.ADDED_COLUMNS`` filled, checked to hold no nulls outside ``sc.NULLABLE_COLUMNS`` (else
    SchemaError naming ``where``), sorted by (agent_id, eps_id, t, timestamp): the rows in the order every reader
    returns them."""
    table = fill_added_columns(table)
    for name in table.column_names:
        nulls = 0 if name in sc.NULLABLE_COLUMNS else table.column(name).null_count
        if nulls:
            raise SchemaError(f"{where}: column {name!r} has {nulls} null values, expected none")
    keys = [sc.AGENT_ID, sc.EPS_ID, sc.T, sc.TIMESTAMP]
    return table.take(pc.sort_indices(table, sort_keys=[(k, "ascending") for k in keys]))


def fill_added_columns(table: pa.Table) -> pa.Table:
    """``table`` with each column of ``sc.ADDED_COLUMNS`` present and its nulls (rows of files from before the
    column existed, scanned with the current schema) replaced by the value older rows read as."""
    reference = sc.trajectory_schema(1, 1)
    for name, (_, default) in sc.ADDED_COLUMNS.items():
        index = table.schema.get_field_index(name)
        if index < 0:
            field = reference.field(name)
            table = table.append_column(field, pa.array([default] * table.num_rows, field.type))
        elif table.column(index).null_count:
            table = table.set_column(index, table.schema.field(index), pc.fill_null(table.column(index), default))
    return table


def _check_schemas(files: list[str], fragments: list[ds.ParquetFileFragment], frames: bool) -> tuple[int, int]:
    """Check every file against the trajectory schema; returns (S, A) shared by all files."""
    dims: dict[str, tuple[int, str]] = {}  # column -> (size, first file that set it)
    for path, fragment in zip(files, fragments):
        try:
            physical = fragment.physical_schema
        except (pa.ArrowInvalid, OSError) as e:
            raise SchemaError(f"{path}: not a Parquet file ({e})") from e
        version = _check_version(path, physical)
        sizes = _check_fields(path, physical, version, {name: size for name, (size, _) in dims.items()}, frames)
        if sizes[sc.NEW_OBS] != sizes[sc.OBS]:
            raise SchemaError(
                f"{path}: column {sc.NEW_OBS!r} has {sizes[sc.NEW_OBS]} values per row, "
                f"expected {sizes[sc.OBS]} (the size of {sc.OBS!r})"
            )
        for name in (sc.OBS, sc.ACTIONS):
            size, first = dims.setdefault(name, (sizes[name], path))
            if sizes[name] != size:
                raise SchemaError(
                    f"{path}: column {name!r} has {sizes[name]} values per row but other files have {size} "
                    f"(e.g. {first})"
                )
    return dims[sc.OBS][0], dims[sc.ACTIONS][0]


def _check_version(path: str, physical: pa.Schema) -> str:
    """The file's schema version, or SchemaError when this fleetwm cannot read it."""
    metadata = physical.metadata or {}
    version = metadata.get(sc.META_SCHEMA_VERSION)
    if version is None:
        raise SchemaError(
            f"{path}: no {sc.META_SCHEMA_VERSION.decode()!r} metadata, "
            f"expected schema version {sc.SCHEMA_VERSION} (was it written by fleetwm?)"
        )
    if version.decode() not in sc.READABLE_VERSIONS:
        raise SchemaError(
            f"{path}: metadata {sc.META_SCHEMA_VERSION.decode()!r} says schema version {version.decode()}, "
            f"this fleetwm reads versions {', '.join(sc.READABLE_VERSIONS)}"
        )
    return version.decode()


def _check_fields(path: str, physical: pa.Schema, version: str, known: dict[str, int],
                  frames: bool) -> dict[str, int]:
    """Check names and types of the known columns (as schema ``version`` stores them); returns list sizes
    of the vector columns (0 for ``OBS`` and ``NEW_OBS`` of a file of camera frames alone).

    ``known`` holds the sizes of obs and actions set by earlier files, for the message.
    """
    # Any positive sizes will do: only the scalar types are compared against this.
    reference = sc.trajectory_schema(1, 1)
    sizes = {}
    _check_optional(path, physical, reference)
    if version == sc.IMAGE_SCHEMA_VERSION and not frames:
        raise SchemaError(f"{path}: holds camera frames (schema version {version}); "
                          f"read it with worldmodel.data.images.read_image_transitions")
    bare = (physical.metadata or {}).get(sc.META_OBS_DIM) == b"0"  # frames alone: no vector observation
    for name in sc.stored_columns(version):
        index = physical.get_field_index(name)
        if bare and name in (sc.OBS, sc.NEW_OBS):
            sizes[name] = 0
            continue
        if index < 0:
            raise SchemaError(f"{path}: missing column {name!r}")
        actual = physical.field(index).type
        wanted = sc.LEGACY_TIMESTAMP_TYPE if name == sc.TIMESTAMP and version == "1" else reference.field(name).type
        if name in sc.VECTOR_COLUMNS:
            # Compare structure, not type equality: Parquet names the list child
            # "element" where Arrow says "item", and pyarrow's == counts the name.
            ok = pa.types.is_fixed_size_list(actual) and actual.value_type == pa.float32()
            if not ok:
                size = known.get(sc.ACTIONS if name == sc.ACTIONS else sc.OBS, "n")
                raise SchemaError(f"{path}: column {name!r} has type {actual}, expected fixed_size_list<float>[{size}]")
            sizes[name] = actual.list_size
        elif actual != wanted:
            raise SchemaError(f"{path}: column {name!r} has type {actual}, expected {wanted}")
    return sizes


def _check_optional(path: str, physical: pa.Schema, reference: pa.Schema) -> None:
    """SchemaError when a file stores one of ``sc.NULLABLE_COLUMNS`` (optional in every version) with a wrong type."""
    for name in sc.NULLABLE_COLUMNS:
        index = physical.get_field_index(name)
        if index >= 0 and physical.field(index).type != reference.field(name).type:
            raise SchemaError(f"{path}: column {name!r} has type {physical.field(index).type}, "
                              f"expected {reference.field(name).type}")


def read_env_id(root: str, filesystem: pafs.FileSystem | None = None, *, files: list[str] | None = None) -> str:
    """The env id in the first log file's metadata; "" when the file has none.

    ``files``: ``root``'s files as ``require_log_files`` returns them, when the caller has listed them already.
    """
    fs, _ = resolve_root(root, filesystem)
    files = files or require_log_files(root, filesystem)[2]
    try:
        physical = ds.ParquetFileFormat().make_fragment(files[0], filesystem=fs).physical_schema
    except (pa.ArrowInvalid, OSError) as e:
        raise SchemaError(f"{files[0]}: not a Parquet file ({e})") from e
    return (physical.metadata or {}).get(sc.META_ENV_ID, b"").decode()


def data_fingerprint(root: str, filesystem: pafs.FileSystem | None = None, *,
                     files: list[str] | None = None) -> str:
    """A content hash of the log tree: ``"sha256:<hex>"``.

    Covers each file's path relative to ``root`` and the sha256 of its bytes, so it
    is the same on any machine holding the same files and changes when a file is
    added, removed, renamed or modified.

    ``files``: ``root``'s files as ``require_log_files`` returns them, when the caller has listed them already.

    Raises:
        FileNotFoundError: no log files under ``root``.
    """
    fs, base = resolve_root(root, filesystem)
    files = files or require_log_files(root, filesystem)[2]
    outer = hashlib.sha256()
    for path in files:
        inner = hashlib.sha256()
        with fs.open_input_stream(path) as f:
            while chunk := f.read(_HASH_CHUNK):
                inner.update(chunk)
        # NUL and newline cannot appear in our file names, so entries cannot run together.
        outer.update(f"{_relative(path, base)}\0{inner.hexdigest()}\n".encode())
    return f"sha256:{outer.hexdigest()}"
