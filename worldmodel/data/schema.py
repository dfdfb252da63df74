"""The trajectory log schema: the only place column names are spelled.

Column names follow RLlib's offline format (``ray.rllib.core.columns.Columns``)
so Ray Data and RLlib read fleetwm logs as they are. Each row is one transition
of one agent: ``obs --actions--> new_obs`` with its reward and end flags.

Dimensions: ``B`` transitions, ``S`` observation size, ``A`` action size.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "3"
"""Bumped on any incompatible change; written into the metadata of every file without camera frames."""

IMAGE_SCHEMA_VERSION = "4"
"""Version 3 plus camera frames (``worldmodel.data.images``), written into files that hold them. Files without
frames keep version 3, so a fleetwm that predates frames still reads them and refuses only the frames."""

READABLE_VERSIONS = ("1", "2", "3", "4")
"""Schema versions the reader accepts. Version 1 stores ``TIMESTAMP`` differently; versions 1-2 lack ``SCENE``;
version 4 adds the frame columns and may lack ``OBS`` and ``NEW_OBS`` (frames alone, ``META_OBS_DIM`` "0")."""

# Metadata keys stored in each Parquet file's schema.
META_SCHEMA_VERSION = b"fleetwm.schema_version"
META_OBS_DIM = b"fleetwm.obs_dim"
META_ACT_DIM = b"fleetwm.act_dim"
META_ENV_ID = b"fleetwm.env_id"

# --- RLlib offline columns -------------------------------------------------
OBS = "obs"
"""Observation before the step: fixed-size list<float32>[S]."""
ACTIONS = "actions"
"""Action taken: fixed-size list<float32>[A]."""
REWARDS = "rewards"
"""Reward received for the step: float32."""
NEW_OBS = "new_obs"
"""Observation after the step: fixed-size list<float32>[S]."""
TERMINATEDS = "terminateds"
"""True when the step reached a terminal state (no bootstrapping past it)."""
TRUNCATEDS = "truncateds"
"""True when the episode was cut (time limit) without a terminal state."""
EPS_ID = "eps_id"
"""Episode id, unique across the fleet: string."""
AGENT_ID = "agent_id"
"""Agent that produced the transition: string."""
T = "t"
"""Step index within the episode, starting at 0: int32."""

# --- fleet columns ---------------------------------------------------------
MODEL_VERSION = "model_version"
"""Model version that chose the action ("" for random or external policies)."""
TIMESTAMP = "timestamp"
"""Wall-clock time of the step: int64 microseconds since the Unix epoch, UTC.

Stored as a plain integer, not an Arrow timestamp: RLlib's offline pipeline turns every column it
does not know into a tensor, and torch has no datetime type. ``Transitions`` holds it as datetime64[us].
"""
TIMESTAMP_TYPE = pa.int64()
"""Arrow type of ``TIMESTAMP`` in schema version 2."""
LEGACY_TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
"""Arrow type of ``TIMESTAMP`` in schema version 1 files, read and converted to ``TIMESTAMP_TYPE``."""
SCENE = "scene"
"""The shared world episode (a warehouse floor's) the transition belongs to: string, "" for a lone agent.

Agents on one floor share it, and rows with equal (scene, t) are one tick of that floor, so a learner can
rebuild who was near whom.
"""

# --- safety columns --------------------------------------------------------
VIOLATIONS = "violations"
"""The env's own constraint test at the step's new state: nullable bool, null where it was not logged (unknown,
never read as False).

For Nav2D and PixelNav2D it is the geofence breach, ``info["violation"]``: the new position strictly inside a
no-fly zone (the flag a real autopilot reports, MAVLink's ``FENCE_STATUS.breach_status``). RLlib has no column
for it; the name takes RLlib's plural per-step form (``terminateds``). Files of any version may lack it (files
from before it, rows a producer could not judge, such as served telemetry): those rows read as unknown.
"""

VECTOR_COLUMNS = (OBS, ACTIONS, NEW_OBS)
COLUMNS = (OBS, ACTIONS, REWARDS, NEW_OBS, TERMINATEDS, TRUNCATEDS, EPS_ID, AGENT_ID, T, MODEL_VERSION, TIMESTAMP,
           SCENE, VIOLATIONS)

NULLABLE_COLUMNS = (VIOLATIONS,)
"""Columns whose nulls mean "unknown": a file of any version may lack them (they then read as null), and readers
keep their nulls rather than refuse them. Adding one is a compatible change: no schema version bump."""

ADDED_COLUMNS = {SCENE: ("3", "")}
"""Columns later schema versions added: name -> (first version storing it, the value older files' rows read as)."""


def stored_columns(version: str) -> tuple[str, ...]:
    """The columns a file of schema ``version`` (one of ``READABLE_VERSIONS``) must store (``NULLABLE_COLUMNS`` are
    optional in every version)."""
    return tuple(name for name in COLUMNS
                 if name not in NULLABLE_COLUMNS and int(version) >= int(ADDED_COLUMNS.get(name, ("1", None))[0]))


def trajectory_schema(obs_dim: int, act_dim: int, env_id: str = "") -> pa.Schema:
    """The Arrow schema of a log file for observations of size S and actions of size A."""
    if obs_dim < 1 or act_dim < 1:
        raise ValueError(f"obs_dim and act_dim must be >= 1, got obs_dim={obs_dim}, act_dim={act_dim}")
    vec_s = pa.list_(pa.float32(), obs_dim)
    vec_a = pa.list_(pa.float32(), act_dim)
    fields = [
        pa.field(OBS, vec_s, nullable=False),
        pa.field(ACTIONS, vec_a, nullable=False),
        pa.field(REWARDS, pa.float32(), nullable=False),
        pa.field(NEW_OBS, vec_s, nullable=False),
        pa.field(TERMINATEDS, pa.bool_(), nullable=False),
        pa.field(TRUNCATEDS, pa.bool_(), nullable=False),
        pa.field(EPS_ID, pa.string(), nullable=False),
        pa.field(AGENT_ID, pa.string(), nullable=False),
        pa.field(T, pa.int32(), nullable=False),
        pa.field(MODEL_VERSION, pa.string(), nullable=False),
        pa.field(TIMESTAMP, TIMESTAMP_TYPE, nullable=False),
        pa.field(SCENE, pa.string(), nullable=False),
        pa.field(VIOLATIONS, pa.bool_(), nullable=True),
    ]
    metadata = {
        META_SCHEMA_VERSION: SCHEMA_VERSION.encode(),
        META_OBS_DIM: str(obs_dim).encode(),
        META_ACT_DIM: str(act_dim).encode(),
        META_ENV_ID: env_id.encode(),
    }
    return pa.schema(fields, metadata=metadata)
