"""Trajectory logs: the schema, the in-memory batch, and Parquet writing and reading."""

from worldmodel.data.batch import Transitions
from worldmodel.data.reader import (SchemaError, data_fingerprint, list_log_files, read_env_id, read_transitions,
                                    require_log_files)
from worldmodel.data.writer import TrajectoryWriter, check_writable, write_transitions

__all__ = [
    "SchemaError",
    "TrajectoryWriter",
    "Transitions",
    "check_writable",
    "data_fingerprint",
    "list_log_files",
    "read_env_id",
    "read_transitions",
    "require_log_files",
    "write_transitions",
]
