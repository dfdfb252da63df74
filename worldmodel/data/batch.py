"""Transitions: a batch of logged steps as numpy arrays, the in-memory twin of a log file.

Dimensions: ``B`` transitions, ``S`` observation size, ``A`` action size.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from worldmodel.data import schema as sc

UNKNOWN = -1
"""``Transitions.violations`` of a row whose constraint test was not logged (a null ``VIOLATIONS``)."""


@dataclass(frozen=True)
class Transitions:
    """B transitions; every array has B rows.

    Attributes:
        obs: (B, S) float32 observations before the step.
        actions: (B, A) float32 actions.
        rewards: (B,) float32 rewards.
        new_obs: (B, S) float32 observations after the step.
        terminateds: (B,) bool, terminal state reached.
        truncateds: (B,) bool, episode cut without a terminal state.
        eps_id: (B,) str episode ids.
        agent_id: (B,) str agent ids.
        t: (B,) int32 step index within the episode.
        model_version: (B,) str model version that acted ("" when none).
        timestamp: (B,) datetime64[us] UTC wall-clock time of the step.
        scene: (B,) str shared world episode ("" for a lone agent); equal (scene, t) is one tick of a floor.
        violations: (B,) int8 constraint test at the new state (``schema.VIOLATIONS``): 1 violated, 0 not,
            ``UNKNOWN`` (-1) not logged. None (the default) makes every row unknown. A sentinel rather than NaN, so
            that rows compare equal to themselves.
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    new_obs: np.ndarray
    terminateds: np.ndarray
    truncateds: np.ndarray
    eps_id: np.ndarray
    agent_id: np.ndarray
    t: np.ndarray
    model_version: np.ndarray
    timestamp: np.ndarray
    scene: np.ndarray
    violations: np.ndarray | None = None

    def __post_init__(self) -> None:
        b = len(self.obs)
        if self.violations is None:  # producers that cannot judge the step (served telemetry) leave it unknown
            object.__setattr__(self, "violations", np.full(b, UNKNOWN, np.int8))
        if self.obs.ndim != 2 or self.actions.ndim != 2:
            raise ValueError(f"obs must be (B, S) and actions (B, A); got {self.obs.shape} and {self.actions.shape}")
        if self.new_obs.shape != self.obs.shape:
            raise ValueError(f"new_obs has shape {self.new_obs.shape}, expected obs's shape {self.obs.shape}")
        for f in dataclasses.fields(self):
            n = len(getattr(self, f.name))
            if n != b:
                raise ValueError(f"column {f.name!r} has {n} rows, expected {b} (the rows of obs)")

    @classmethod
    def build(
        cls,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        new_obs: np.ndarray,
        terminateds: np.ndarray,
        truncateds: np.ndarray,
        eps_id: Sequence[str] | np.ndarray,
        agent_id: Sequence[str] | np.ndarray | str,
        t: np.ndarray,
        model_version: Sequence[str] | np.ndarray | str = "",
        timestamp: np.ndarray | None = None,
        scene: Sequence[str] | np.ndarray | str = "",
        violations: np.ndarray | None = None,
    ) -> "Transitions":
        """Coerce dtypes and broadcast scalar agent_id / model_version / scene / timestamp (now) to B rows;
        ``violations`` (B,) bool or int (``UNKNOWN``: not logged) defaults to unknown."""
        obs = np.asarray(obs, dtype=np.float32)
        b = len(obs)

        def strings(x: Sequence[str] | np.ndarray | str) -> np.ndarray:
            if isinstance(x, str):
                return np.full(b, x, dtype=object)
            return np.asarray(x, dtype=object)

        def column(name: str, x: object, dtype: object, shape: tuple[int, ...]) -> np.ndarray:
            # numpy's own reshape error does not say which column was the wrong length.
            arr = np.asarray(x, dtype=dtype)
            try:
                return arr.reshape(shape)
            except ValueError as e:
                raise ValueError(f"column {name!r} has shape {arr.shape}, expected {b} rows (the rows of obs)") from e

        if timestamp is None:
            now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
            timestamp = np.full(b, np.datetime64(now, "us"))
        return cls(
            obs=obs,
            actions=column("actions", actions, np.float32, (b, -1)),
            rewards=column("rewards", rewards, np.float32, (b,)),
            new_obs=np.asarray(new_obs, dtype=np.float32),
            terminateds=column("terminateds", terminateds, bool, (b,)),
            truncateds=column("truncateds", truncateds, bool, (b,)),
            eps_id=strings(eps_id),
            agent_id=strings(agent_id),
            t=column("t", t, np.int32, (b,)),
            model_version=strings(model_version),
            timestamp=column("timestamp", timestamp, "datetime64[us]", (b,)),
            scene=strings(scene),
            violations=None if violations is None else column("violations", violations, np.int8, (b,)),
        )

    def __len__(self) -> int:
        return len(self.obs)

    @property
    def obs_dim(self) -> int:
        return self.obs.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    def select(self, index: np.ndarray) -> "Transitions":
        """Rows picked by a boolean mask or an integer index array."""
        return Transitions(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    @staticmethod
    def concat(parts: Sequence["Transitions"]) -> "Transitions":
        if not parts:
            raise ValueError("concat needs at least one Transitions")
        return Transitions(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Transitions)}
        )

    def to_table(self, env_id: str = "") -> pa.Table:
        """An Arrow table with the log schema (see ``schema.trajectory_schema``)."""
        schema = sc.trajectory_schema(self.obs_dim, self.act_dim, env_id)

        def vectors(x: np.ndarray) -> pa.FixedSizeListArray:
            return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1])

        columns = {
            sc.OBS: vectors(self.obs),
            sc.ACTIONS: vectors(self.actions),
            sc.REWARDS: pa.array(self.rewards, pa.float32()),
            sc.NEW_OBS: vectors(self.new_obs),
            sc.TERMINATEDS: pa.array(self.terminateds, pa.bool_()),
            sc.TRUNCATEDS: pa.array(self.truncateds, pa.bool_()),
            sc.EPS_ID: pa.array(self.eps_id.tolist(), pa.string()),
            sc.AGENT_ID: pa.array(self.agent_id.tolist(), pa.string()),
            sc.T: pa.array(self.t, pa.int32()),
            sc.MODEL_VERSION: pa.array(self.model_version.tolist(), pa.string()),
            sc.TIMESTAMP: pa.array(self.timestamp.astype(np.int64), sc.TIMESTAMP_TYPE),  # microseconds, UTC
            sc.SCENE: pa.array(self.scene.tolist(), pa.string()),
            sc.VIOLATIONS: pa.array(self.violations == 1, pa.bool_(), mask=self.violations == UNKNOWN),
        }
        return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)

    @classmethod
    def from_table(cls, table: pa.Table) -> "Transitions":
        """Inverse of ``to_table``; the table must hold the log schema's columns (``TIMESTAMP`` as any version
        stores it; ``reader.fill_added_columns`` gives an older version's table its ``SCENE``); a missing or null
        ``VIOLATIONS`` reads as ``UNKNOWN``)."""

        def vectors(name: str) -> np.ndarray:
            col = table.column(name).combine_chunks()
            width = col.type.list_size
            return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, width)

        def plain(name: str) -> np.ndarray:
            return table.column(name).to_numpy(zero_copy_only=False)

        return cls(
            obs=vectors(sc.OBS),
            actions=vectors(sc.ACTIONS),
            rewards=plain(sc.REWARDS).astype(np.float32),
            new_obs=vectors(sc.NEW_OBS),
            terminateds=plain(sc.TERMINATEDS).astype(bool),
            truncateds=plain(sc.TRUNCATEDS).astype(bool),
            eps_id=plain(sc.EPS_ID).astype(object),
            agent_id=plain(sc.AGENT_ID).astype(object),
            t=plain(sc.T).astype(np.int32),
            model_version=plain(sc.MODEL_VERSION).astype(object),
            timestamp=timestamp_micros(table.column(sc.TIMESTAMP)).astype("datetime64[us]"),
            scene=plain(sc.SCENE).astype(object),
            violations=_violations(table),
        )


def _violations(table: pa.Table) -> np.ndarray:
    """(B,) int8 from the nullable ``VIOLATIONS`` column: 1, 0, ``UNKNOWN`` where null or where the table lacks it."""
    if sc.VIOLATIONS not in table.column_names:
        return np.full(table.num_rows, UNKNOWN, np.int8)
    column = table.column(sc.VIOLATIONS)
    flags = pc.fill_null(column, False).to_numpy(zero_copy_only=False).astype(np.int8)
    return np.where(column.is_null().to_numpy(zero_copy_only=False), np.int8(UNKNOWN), flags).astype(np.int8)


def timestamp_micros(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(B,) int64 microseconds since the epoch, UTC, from a ``TIMESTAMP`` column of either schema version."""
    if pa.types.is_timestamp(column.type):  # schema version 1
        column = column.cast(pa.timestamp("us", tz=column.type.tz)).cast(sc.TIMESTAMP_TYPE)
    return column.to_numpy().astype(np.int64)
