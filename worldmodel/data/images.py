"""Image logs: camera frames beside the trajectory log's vector columns; the only place their names are spelled.

Names. RLlib keeps a ``Dict`` observation whole under ``obs`` / ``new_obs`` (a struct column once Ray Data
has it, or an lz4 blob with ``output_compress_columns``), joins nested keys with "/" when it flattens a
batch (``ray.rllib.utils.flatten_dict``), and maps a dataset's own column names onto its ``Columns`` with
``AlgorithmConfig.offline_data(input_read_schema=...)``. fleetwm keeps ``obs`` / ``new_obs`` as the vector part
(a ``Dict``'s ``proprio``) as the trajectory schema has it, and puts the frames in the flat
columns ``obs_image`` / ``new_obs_image``: flat columns reach Ray Data as plain columns where a struct would
reach it as per-row dicts, and "_" rather than "/" because ``obs`` is already a leaf (RLlib's
``unflatten_dict`` would need it to be a dict too). RLlib reads frames alone with
``input_read_schema={"obs": OBS_IMAGE, "new_obs": NEW_OBS_IMAGE}`` (as bytes, for a connector to decode).

Storage. A frame is its raw uint8 bytes in (H, W, C) order in a ``fixed_size_binary(H*W*C)`` column, which
Parquet compresses with zstd like every column; ``META_IMAGE_SHAPE`` in the file metadata gives the shape.
Raw beats PNG on both counts for PixelNav2D's 64x64 frames (12,288 raw bytes), measured on one core:
with the default camera noise (std 8) a frame takes 8.1 kB in the file raw against 8.8 kB as PNG, and reads
back in 15 us against 133 us (PNG decodes frame by frame; raw is one ``np.frombuffer`` per column), after a
PNG encode of 400 us per frame at write time; noise-free frames take 10 B raw against 94 B as PNG, since
zstd also finds what repeats from frame to frame.

Versions. Files holding frames are ``sc.IMAGE_SCHEMA_VERSION``; the vector reader (``read_transitions``, so
training, retraining and compaction too) refuses them rather than drop their frames.

Frames alone. When the frame is the whole observation the file has no ``OBS`` / ``NEW_OBS`` columns (Arrow has
no zero-width lists) and ``META_OBS_DIM`` says "0"; in memory the vector part then has S = 0.

Dimensions: ``B`` transitions, ``S`` vector observation size, ``A`` action size, ``H, W, C`` frame shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from worldmodel.data import schema as sc
from worldmodel.data.batch import Transitions
from worldmodel.data.reader import SchemaError, check_log_files, require_log_files, sorted_log_table
from worldmodel.data.writer import resolve_root

OBS_IMAGE = "obs_image"
"""Camera frame before the step: fixed_size_binary[H*W*C], uint8 in (H, W, C) order."""
NEW_OBS_IMAGE = "new_obs_image"
"""Camera frame after the step: fixed_size_binary[H*W*C], uint8 in (H, W, C) order."""
IMAGE_COLUMNS = (OBS_IMAGE, NEW_OBS_IMAGE)

META_IMAGE_SHAPE = b"fleetwm.image_shape"
"""File metadata: the frame shape as "H,W,C"."""

_VECTOR_OBS = (sc.OBS, sc.NEW_OBS)


def image_type(image_shape: Sequence[int]) -> pa.DataType:
    """Arrow type of a frame column for frames of ``image_shape`` (H, W, C)."""
    return pa.binary(int(np.prod(_shape(image_shape))))


def image_schema(obs_dim: int, act_dim: int, image_shape: Sequence[int], env_id: str = "") -> pa.Schema:
    """The Arrow schema of an image log file: the trajectory schema (without ``OBS`` / ``NEW_OBS`` when
    ``obs_dim`` is 0) plus the frame columns, schema version ``sc.IMAGE_SCHEMA_VERSION``."""
    shape = _shape(image_shape)
    if obs_dim < 0:
        raise ValueError(f"obs_dim must be >= 0 (0: frames alone), got {obs_dim}")
    base = sc.trajectory_schema(max(obs_dim, 1), act_dim, env_id)
    fields = [f for f in base if obs_dim or f.name not in _VECTOR_OBS]
    fields += [pa.field(name, image_type(shape), nullable=False) for name in IMAGE_COLUMNS]
    metadata = {**base.metadata, sc.META_SCHEMA_VERSION: sc.IMAGE_SCHEMA_VERSION.encode(),
                sc.META_OBS_DIM: str(obs_dim).encode(), META_IMAGE_SHAPE: ",".join(map(str, shape)).encode()}
    return pa.schema(fields, metadata=metadata)


def read_image_shape(metadata: Mapping[bytes, bytes] | None) -> tuple[int, int, int] | None:
    """The frame shape a file's metadata records; None for a file without frames."""
    text = (metadata or {}).get(META_IMAGE_SHAPE)
    if text is None:
        return None
    try:
        return _shape(tuple(int(n) for n in text.decode().split(",")))
    except ValueError as e:
        raise SchemaError(f"metadata {META_IMAGE_SHAPE.decode()!r} is {text!r}, expected 'H,W,C'") from e


@dataclass(frozen=True)
class ImageTransitions:
    """B transitions with camera frames: the vector columns as ``Transitions``, the frames beside them.

    Attributes:
        rows: the B transitions' vector columns; ``rows.obs`` is (B, 0) when frames are the whole observation.
        obs_image: (B, H, W, C) uint8 frames before the step.
        new_obs_image: (B, H, W, C) uint8 frames after the step.
    """

    rows: Transitions
    obs_image: np.ndarray
    new_obs_image: np.ndarray

    def __post_init__(self) -> None:
        for name in ("obs_image", "new_obs_image"):
            x = getattr(self, name)
            if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(self.rows):
                raise ValueError(f"{name} must be a (B, H, W, C) uint8 array with B = {len(self.rows)} rows, got "
                                 f"{getattr(x, 'dtype', type(x).__name__)} of shape {getattr(x, 'shape', '?')}")
        if self.new_obs_image.shape != self.obs_image.shape:
            raise ValueError(f"new_obs_image has shape {self.new_obs_image.shape}, expected obs_image's "
                             f"{self.obs_image.shape}")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(int(n) for n in self.obs_image.shape[1:])

    @property
    def agent_id(self) -> np.ndarray:
        """(B,) str agent ids (the writer groups files by them)."""
        return self.rows.agent_id

    @property
    def timestamp(self) -> np.ndarray:
        """(B,) datetime64[us] UTC step times (the writer groups files by their date)."""
        return self.rows.timestamp

    def select(self, index: np.ndarray) -> "ImageTransitions":
        """Rows picked by a boolean mask or an integer index array."""
        return ImageTransitions(self.rows.select(index), self.obs_image[index], self.new_obs_image[index])

    @staticmethod
    def concat(parts: Sequence["ImageTransitions"]) -> "ImageTransitions":
        if not parts:
            raise ValueError("concat needs at least one ImageTransitions")
        return ImageTransitions(Transitions.concat([p.rows for p in parts]),
                                np.concatenate([p.obs_image for p in parts]),
                                np.concatenate([p.new_obs_image for p in parts]))

    def to_table(self, env_id: str = "") -> pa.Table:
        """An Arrow table with the image log schema (see ``image_schema``)."""
        schema = image_schema(self.rows.obs_dim, self.rows.act_dim, self.image_shape, env_id)
        rows = self.rows
        if rows.obs_dim == 0:  # the vector table needs S >= 1: build it with a placeholder the schema leaves out
            placeholder = np.zeros((len(rows), 1), np.float32)
            rows = dataclasses.replace(rows, obs=placeholder, new_obs=placeholder)
        vectors = rows.to_table(env_id)
        frames = {OBS_IMAGE: _frame_array(self.obs_image), NEW_OBS_IMAGE: _frame_array(self.new_obs_image)}
        columns = [frames[name] if name in frames else vectors.column(name) for name in schema.names]
        return pa.Table.from_arrays(columns, schema=schema)

    @classmethod
    def from_table(cls, table: pa.Table, image_shape: Sequence[int] | None = None) -> "ImageTransitions":
        """Inverse of ``to_table``; ``image_shape`` defaults to the one in the table's metadata."""
        shape = _shape(image_shape) if image_shape is not None else read_image_shape(table.schema.metadata)
        if shape is None:
            raise SchemaError(f"the table has no {META_IMAGE_SHAPE.decode()!r} metadata, so no camera frames")
        bare = sc.OBS not in table.column_names
        if bare:  # frames alone: Transitions reads a placeholder vector, cut back to S = 0 below
            placeholder = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(table.num_rows, np.float32)), 1)
            table = table.append_column(sc.OBS, placeholder).append_column(sc.NEW_OBS, placeholder)
        rows = Transitions.from_table(table)
        if bare:
            rows = dataclasses.replace(rows, obs=rows.obs[:, :0], new_obs=rows.new_obs[:, :0])
        return cls(rows, _frames(table.column(OBS_IMAGE), shape), _frames(table.column(NEW_OBS_IMAGE), shape))


def read_image_transitions(root: str, filesystem: pafs.FileSystem | None = None, *,
                           files: list[str] | None = None, episodes: Sequence[str] | None = None) -> ImageTransitions:
    """Read every image log file under ``root``, rows in ``read_transitions``' order (``episodes``: the rows of
    these episode ids only).

    Raises:
        FileNotFoundError: no log files under ``root``.
        SchemaError: a file is not Parquet, does not match the trajectory schema, has no frames, or its frames
            differ in shape or type from the other files'.
    """
    dataset, shape = image_log_dataset(root, filesystem, files=files)
    where = None if episodes is None else pc.field(sc.EPS_ID).isin(pa.array(list(episodes), pa.string()))
    table = dataset.to_table(columns=dataset.schema.names, filter=where)
    return ImageTransitions.from_table(sorted_log_table(table, root), shape)


def image_log_dataset(root: str, filesystem: pafs.FileSystem | None = None, *,
                      files: list[str] | None = None) -> tuple[ds.FileSystemDataset, tuple[int, int, int]]:
    """The image log files under ``root`` as one dataset with the expected schema (whatever each file's own), and
    their frame shape (H, W, C); errors as ``read_image_transitions``'."""
    fs, _ = resolve_root(root, filesystem)
    files = files or require_log_files(root, filesystem)[2]
    fragments, obs_dim, act_dim = check_log_files(files, fs, frames=True)
    shape = _check_frames(files, fragments)
    expected = image_schema(obs_dim, act_dim, shape)
    return ds.FileSystemDataset(fragments, schema=expected, format=ds.ParquetFileFormat(), filesystem=fs), shape


def log_episodes(dataset: ds.Dataset) -> np.ndarray:
    """The episode ids of a log dataset, in the order its readers return their rows (by agent, then episode),
    read from those two columns alone."""
    keys = dataset.to_table(columns=[sc.AGENT_ID, sc.EPS_ID])
    keys = keys.take(pc.sort_indices(keys, sort_keys=[(sc.AGENT_ID, "ascending"), (sc.EPS_ID, "ascending")]))
    ids = keys.column(sc.EPS_ID).to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)]


def _check_frames(files: list[str], fragments: list[ds.ParquetFileFragment]) -> tuple[int, int, int]:
    """The frame shape every file shares; SchemaError naming the first file that differs."""
    shape, first = None, ""
    for path, fragment in zip(files, fragments):
        physical = fragment.physical_schema
        try:
            own = read_image_shape(physical.metadata)
        except SchemaError as e:
            raise SchemaError(f"{path}: {e}") from e
        if own is None:
            raise SchemaError(f"{path}: no camera frames (no {META_IMAGE_SHAPE.decode()!r} metadata); "
                              f"read it with read_transitions")
        if shape is not None and own != shape:
            raise SchemaError(f"{path}: frames of shape {own} but other files have {shape} (e.g. {first})")
        shape, first = own, first or path
        for name in IMAGE_COLUMNS:
            index = physical.get_field_index(name)
            actual = physical.field(index).type if index >= 0 else None
            if actual != image_type(own):
                raise SchemaError(f"{path}: column {name!r} has type {actual}, expected {image_type(own)}")
    assert shape is not None  # files is never empty
    return shape


def _shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(n, (int, np.integer)) and n >= 1 for n in shape):
        raise ValueError(f"image_shape must be 3 ints >= 1 (H, W, C), got {image_shape!r}")
    return tuple(int(n) for n in shape)


def _frame_array(frames: np.ndarray) -> pa.FixedSizeBinaryArray:
    """(B, H, W, C) uint8 -> a fixed_size_binary column over the same bytes (no copy when contiguous)."""
    data = pa.py_buffer(np.ascontiguousarray(frames))
    return pa.Array.from_buffers(image_type(frames.shape[1:]), len(frames), [None, data])


def _frames(column: pa.ChunkedArray, shape: tuple[int, int, int]) -> np.ndarray:
    """A frame column -> (B, H, W, C) uint8, a writable copy."""
    array = column.combine_chunks()
    if len(array) == 0:
        return np.zeros((0, *shape), np.uint8)
    width = int(np.prod(shape))
    data = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    return data[array.offset * width:(array.offset + len(array)) * width].reshape(-1, *shape).copy()
