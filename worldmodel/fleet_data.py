"""Fleet logs as the multi-agent world model reads them: the observation layout and neighbours' actions.

A fleet observation holds the robot's physical state, its task, M neighbour slots
``[dx, dy, dvx, dvy, kind]`` and a shelf vector. What a slot does not hold is the action
its robot took at the same tick; the logs do, in that robot's own row. ``neighbour_actions``
finds it: rows with equal (scene, t) are one tick of one floor, and a slot's robot is the
robot of that tick at own position + (dx, dy).

Shapes: ``B`` rows, ``M`` neighbour slots, ``A`` action, ``S`` observation, ``G`` ticks,
``N`` robots on a floor at one tick.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worldmodel.data.batch import Transitions

MATCH_TOLERANCE = 1e-3
"""Metres by which a slot's position may miss its robot's logged position (float32 rounding is ~1e-5)."""
_CHUNK_ELEMENTS = 4_000_000
"""Rows x slots x robots compared at once while matching: bounds the matcher's memory (~50 MB)."""


@dataclass(frozen=True)
class ObsLayout:
    """Where a fleet observation keeps what the fleet model reads (one env's constants, named once there)."""

    phys: slice
    """The physical state P the dynamics predict: position then velocity."""
    pos: slice
    """The position, inside ``phys``."""
    task: slice
    """The current task target point."""
    neighbours: slice
    """M slots of ``[dx, dy, dvx, dvy, kind]`` (other minus own), nearest first."""
    shelf: slice
    """Vector from the robot to the nearest shelf or wall point."""
    slots: int
    """M, the neighbour slots."""
    kinds: int = 3
    """Kinds a slot may hold (0 none, then e.g. robot and human): the width of its one-hot."""
    robot_kind: int = 1
    """The kind of a slot holding a robot, the only kind whose action the logs hold."""

    SLOT_WIDTH = 5  # dx, dy, dvx, dvy, kind

    def __post_init__(self) -> None:
        width = self.neighbours.stop - self.neighbours.start
        if width != self.slots * self.SLOT_WIDTH:
            raise ValueError(f"neighbours spans {width} dims, expected slots={self.slots} x {self.SLOT_WIDTH}")
        if self.phys.stop - self.phys.start != 4:
            raise ValueError(f"phys must span 4 dims (position, velocity), got {self.phys}")

    @property
    def obs_dim(self) -> int:
        """S: one past the last dimension any part uses."""
        return max(s.stop for s in (self.phys, self.task, self.neighbours, self.shelf))

    @property
    def phys_dim(self) -> int:
        return self.phys.stop - self.phys.start

    def slot_view(self, obs: np.ndarray) -> np.ndarray:
        """The neighbour slots of ``obs`` (..., S) as (..., M, 5)."""
        return obs[..., self.neighbours].reshape(*obs.shape[:-1], self.slots, self.SLOT_WIDTH)


def warehouse_layout() -> ObsLayout:
    """The layout of ``Warehouse-v1`` observations."""
    from worldmodel.envs import warehouse as wh  # the env's module names its slices once

    return ObsLayout(phys=wh.PHYS_DIMS, pos=wh.POS_DIMS, task=wh.TASK_DIMS, neighbours=wh.NEIGHBOUR_DIMS,
                     shelf=wh.SHELF_DIMS, slots=wh.NEIGHBOURS, robot_kind=wh.KIND_ROBOT)


def layout_for(env_id: str) -> ObsLayout:
    """The fleet layout of ``env_id``; ValueError for an env whose agents do not see each other."""
    from worldmodel.envs.warehouse import WAREHOUSE_ID

    if env_id != WAREHOUSE_ID:
        raise ValueError(f"the fleet dynamics needs a fleet env's observations ({WAREHOUSE_ID}), got {env_id!r}")
    return warehouse_layout()


def neighbour_actions(data: Transitions, layout: ObsLayout | None = None) -> np.ndarray:
    """The action of the robot in each neighbour slot of each row: (B, M, A) float32.

    Zeros for empty slots, humans, and robot slots whose robot has no row at that tick in
    ``data`` (a subset of a floor's logs). Rows without a scene (lone agents) have none.

    Args:
        data: B transitions of fleet floors (``scene`` and ``t`` name the tick).
        layout: where ``obs`` keeps position and slots (default: ``Warehouse-v1``'s).
    """
    layout = layout or warehouse_layout()
    return match_neighbour_actions(data.scene.astype(str), data.t, data.obs, data.actions, layout)


def match_neighbour_actions(scene: np.ndarray, t: np.ndarray, obs: np.ndarray, actions: np.ndarray,
                            layout: ObsLayout) -> np.ndarray:
    """``neighbour_actions`` on plain columns: scene (B,) str, t (B,) int, obs (B, S), actions (B, A)."""
    b, m, a = len(obs), layout.slots, actions.shape[1]
    out = np.zeros((b, m, a), dtype=np.float32)
    if b == 0:
        return out
    tick, rank, table = _tick_tables(scene, t, obs[:, layout.pos])  # (B,), (B,), (G, N, 2)
    rows_of = np.full(table.shape[:2], -1, dtype=np.int64)  # (G, N) each tick's rows
    rows_of[tick, rank] = np.arange(b)
    slots = layout.slot_view(obs)  # (B, M, 5)
    wanted = (np.rint(slots[..., 4]) == layout.robot_kind) & (scene != "")[:, None]  # (B, M)
    target = obs[:, None, layout.pos].astype(np.float64) + slots[..., :2]  # (B, M, 2)
    step = max(1, _CHUNK_ELEMENTS // (m * table.shape[1]))
    for lo in range(0, b, step):  # chunks of rows bound the (rows, M, N) distances, not a loop over robots
        hi = min(b, lo + step)
        miss = np.abs(target[lo:hi, :, None] - table[tick[lo:hi], None]).max(-1)  # (b, M, N)
        miss = np.where(np.isnan(miss), np.inf, miss)  # padding never matches
        best = miss.argmin(-1)  # (b, M)
        found = np.take_along_axis(miss, best[..., None], -1)[..., 0] < MATCH_TOLERANCE
        ok = wanted[lo:hi] & found
        source = rows_of[tick[lo:hi, None], best]  # (b, M) row of each slot's robot
        out[lo:hi][ok] = actions[source[ok]]
    return out


def _tick_tables(scene: np.ndarray, t: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's tick (G distinct (scene, t)), its rank among the tick's rows, and every tick's
    positions padded with NaN: ((B,), (B,), (G, N, 2) float64)."""
    _, scene_id = np.unique(scene, return_inverse=True)
    key = scene_id.astype(np.int64) * (int(t.max()) + 1) + t.astype(np.int64)
    _, tick = np.unique(key, return_inverse=True)  # (B,)
    order = np.argsort(tick, kind="stable")
    counts = np.bincount(tick)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rank = np.empty(len(tick), dtype=np.int64)
    rank[order] = np.arange(len(tick)) - np.repeat(starts, counts)
    table = np.full((len(counts), int(counts.max()), 2), np.nan)
    table[tick, rank] = pos
    return tick, rank, table
