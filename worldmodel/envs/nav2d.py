"""Nav2D: a 2-D point mass driving to a goal, the robot each fleet agent runs.

The state is the observation ``[x, y, vx, vy, gx, gy]`` (position, velocity, goal),
float32, shape (S,) = (6,). The action is an acceleration in [-1, 1]^2, shape (A,) = (2,).
Dynamics are semi-implicit Euler with Gaussian actuation noise; positions stay inside the
arena [-arena, arena]^2. Reward is minus the distance from the new position to the goal;
reaching the goal terminates the episode. Optional no-fly zones (``Z`` discs, each
``(cx, cy, radius)``) are reported in ``info`` so planners and metrics can avoid and count
violations; they never change the dynamics.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

POS_DIMS = slice(0, 2)
"""Where the observation carries the agent's position (x, y)."""
VEL_DIMS = slice(2, 4)
"""Where the observation carries the agent's velocity (vx, vy)."""
GOAL_DIMS = slice(4, 6)
"""Where the observation carries the agent's goal (gx, gy): the one place this slice is spelled."""
DT = 0.1
"""Integration step in seconds."""
MAX_EPISODE_STEPS = 200
"""Time limit applied by the registration (gymnasium's TimeLimit reports it as truncation)."""
MIN_GOAL_DISTANCE = 2.0
"""A random goal is drawn at least this far from the start."""
ZONE_SEGMENT = (0.3, 0.7)
"""The first no-fly zone sits at this fraction range of the way from start to goal."""

# Rejection sampling draws this many candidates per batch, for at most _MAX_BATCHES batches:
# bounded work per reset instead of a loop that may never end.
_CANDIDATES = 256
_MAX_BATCHES = 8
_OPTION_KEYS = frozenset({"start", "goal", "num_no_fly_zones", "no_fly_zones"})


class Nav2DEnv(gym.Env[np.ndarray, np.ndarray]):
    """A point mass in a square arena, steered by noisy acceleration towards a goal.

    ``info`` (from reset and step) always carries ``is_success`` (bool), ``distance`` (float,
    position to goal), ``violation`` (bool, position strictly inside a no-fly zone) and
    ``no_fly_zones`` ((Z, 3) float32 of cx, cy, radius; (0, 3) when off).

    Reset options (each for one episode):
        ``start``: (x, y) inside the arena; ``goal``: (gx, gy) inside the spawn box;
        ``num_no_fly_zones``: int, zones drawn as described below;
        ``no_fly_zones``: (Z, 3) array used as given (it may contain start or goal).

    Drawn zones matter and are fair: the first is centred on the start-goal segment, the rest
    uniformly in the spawn box, and none comes within ``zone_radius + goal_radius`` of start or
    goal. While zones are drawn, random goals are at least twice that clearance from the start
    so the first zone always fits; a zone that finds no valid centre is dropped, so Z can be
    smaller than asked (only when zones crowd the spawn box, or for given start and goal
    closer than twice the clearance).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        arena: float = 10.0,
        spawn: float = 5.0,
        max_speed: float = 3.0,
        action_noise: float = 0.05,
        goal_radius: float = 0.5,
        num_no_fly_zones: int = 0,
        zone_radius: float = 1.0,
        render_mode: str | None = None,
    ) -> None:
        """Args:
        arena: half-width of the square the agent is confined to.
        spawn: half-width of the square random starts, goals and zones are drawn from.
        max_speed: bound on each velocity component.
        action_noise: std of Gaussian noise added to the acceleration; real actuators are
            noisy, and it gives a learned model a variance worth predicting.
        goal_radius: the episode succeeds (terminates) within this distance of the goal.
        num_no_fly_zones: zones drawn per episode (0 = off).
        zone_radius: radius of each drawn zone.
        render_mode: must be None; Nav2D does not render.
        """
        if not arena > 0:
            raise ValueError(f"arena must be > 0, got {arena}")
        if not MIN_GOAL_DISTANCE <= spawn <= arena:
            raise ValueError(f"spawn must be in [{MIN_GOAL_DISTANCE}, arena={arena}], got {spawn}")
        if not max_speed > 0:
            raise ValueError(f"max_speed must be > 0, got {max_speed}")
        if not action_noise >= 0:
            raise ValueError(f"action_noise must be >= 0, got {action_noise}")
        if not goal_radius > 0:
            raise ValueError(f"goal_radius must be > 0, got {goal_radius}")
        if not zone_radius > 0:
            raise ValueError(f"zone_radius must be > 0, got {zone_radius}")
        _check_zone_count(num_no_fly_zones)
        if render_mode is not None:
            raise ValueError(f"render_mode must be None (Nav2D does not render), got {render_mode!r}")
        self.arena = float(arena)
        self.spawn = float(spawn)
        self.max_speed = float(max_speed)
        self.action_noise = float(action_noise)
        self.goal_radius = float(goal_radius)
        self.num_no_fly_zones = int(num_no_fly_zones)
        self.zone_radius = float(zone_radius)
        self.render_mode = render_mode

        high = np.array([arena, arena, max_speed, max_speed, spawn, spawn], dtype=np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        # The state is kept as the float32 observation itself, so the next step depends on
        # exactly what was observed: a model sees a Markov state with no hidden precision.
        self._state = np.zeros(6, dtype=np.float32)
        self._zones = np.zeros((0, 3), dtype=np.float32)

    @property
    def clearance(self) -> float:
        """Least distance from a drawn zone's centre to the start and to the goal."""
        return self.zone_radius + self.goal_radius

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - _OPTION_KEYS)
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; Nav2D accepts {sorted(_OPTION_KEYS)}")
        if "num_no_fly_zones" in options and "no_fly_zones" in options:
            raise ValueError("give either 'num_no_fly_zones' or 'no_fly_zones' in reset options, not both")
        num_zones = options.get("num_no_fly_zones", self.num_no_fly_zones)
        _check_zone_count(num_zones)

        if "start" in options:
            start = _point(options["start"], "start", self.arena)
        else:
            start = self.np_random.uniform(-self.spawn, self.spawn, size=2)
        if "goal" in options:
            goal = _point(options["goal"], "goal", self.spawn)
        else:
            min_distance = max(MIN_GOAL_DISTANCE, 2 * self.clearance) if num_zones else MIN_GOAL_DISTANCE
            goal = self._sample_goal(start, min_distance)

        if "no_fly_zones" in options:
            self._zones = _zones(options["no_fly_zones"])
        else:
            self._zones = self._sample_zones(start, goal, int(num_zones))
        self._state = np.concatenate([start, np.zeros(2), goal]).astype(np.float32)
        return self._state.copy(), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (2,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be 2 finite numbers, got {action!r}")
        state = self._state.astype(np.float64)
        p, v, goal = state[POS_DIMS], state[VEL_DIMS], state[GOAL_DIMS]
        # Noise is drawn even when its std is 0 so the random stream does not depend on it.
        noise = self.np_random.normal(0.0, 1.0, size=2) * self.action_noise
        v = np.clip(v + (np.clip(a, -1.0, 1.0) + noise) * DT, -self.max_speed, self.max_speed)
        p = p + v * DT
        hit_wall = np.abs(p) > self.arena
        p = np.clip(p, -self.arena, self.arena)
        v = np.where(hit_wall, 0.0, v)
        self._state = np.concatenate([p, v, goal]).astype(np.float32)
        info = self._info()
        return self._state.copy(), -info["distance"], info["is_success"], False, info

    def _info(self) -> dict[str, Any]:
        p = self._state[POS_DIMS].astype(np.float64)
        distance = float(np.linalg.norm(p - self._state[GOAL_DIMS]))
        inside = np.linalg.norm(self._zones[:, :2] - p, axis=1) < self._zones[:, 2]  # (Z,)
        return {
            "is_success": distance <= self.goal_radius,
            "distance": distance,
            "violation": bool(inside.any()),
            "no_fly_zones": self._zones.copy(),
        }

    def _sample_goal(self, start: np.ndarray, min_distance: float) -> np.ndarray:
        """A uniform point of the spawn box at least ``min_distance`` from ``start``: (2,)."""
        for _ in range(_MAX_BATCHES):
            candidates = self.np_random.uniform(-self.spawn, self.spawn, size=(_CANDIDATES, 2))
            ok = np.linalg.norm(candidates - start, axis=1) >= min_distance
            if ok.any():
                return candidates[np.argmax(ok)]
        raise RuntimeError(
            f"no goal in the spawn box [-{self.spawn}, {self.spawn}]^2 is {min_distance} away from start "
            f"{start.tolist()} after {_MAX_BATCHES * _CANDIDATES} draws; enlarge spawn or shrink the zones"
        )

    def _sample_zones(self, start: np.ndarray, goal: np.ndarray, num_zones: int) -> np.ndarray:
        """Up to ``num_zones`` zones kept ``clearance`` away from start and goal: (Z, 3)."""
        c = self.clearance
        centres: list[np.ndarray] = []
        if num_zones > 0:
            # The fractions u with u*d >= c and (1-u)*d >= c form an interval, so sampling it
            # directly equals rejection sampling on ZONE_SEGMENT without any retries.
            d = float(np.linalg.norm(goal - start))
            lo = max(ZONE_SEGMENT[0], c / d) if d > 0 else 1.0
            hi = min(ZONE_SEGMENT[1], 1.0 - c / d) if d > 0 else 0.0
            if lo <= hi:
                centres.append(start + self.np_random.uniform(lo, hi) * (goal - start))
        for _ in range(num_zones - 1):  # zones are few and this runs once per reset
            candidates = self.np_random.uniform(-self.spawn, self.spawn, size=(_CANDIDATES, 2))
            ok = (np.linalg.norm(candidates - start, axis=1) >= c) & (np.linalg.norm(candidates - goal, axis=1) >= c)
            if ok.any():
                centres.append(candidates[np.argmax(ok)])
        zones = np.zeros((len(centres), 3), dtype=np.float32)
        if centres:
            zones[:, :2] = np.stack(centres)
            zones[:, 2] = self.zone_radius
        return zones


def _check_zone_count(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"num_no_fly_zones must be an int >= 0, got {n!r}")


def _point(value: Any, name: str, half_width: float) -> np.ndarray:
    """``value`` as a (2,) float64 point inside [-half_width, half_width]^2."""
    p = np.asarray(value, dtype=np.float64)
    if p.shape != (2,) or not np.all(np.isfinite(p)) or np.any(np.abs(p) > half_width):
        raise ValueError(f"{name} must be 2 finite numbers within [-{half_width}, {half_width}], got {value!r}")
    return p


def _zones(value: Any) -> np.ndarray:
    """``value`` as a (Z, 3) float32 array of (cx, cy, radius) with positive radii."""
    zones = np.asarray(value, dtype=np.float32)
    if zones.size == 0:
        zones = zones.reshape(0, 3)
    if zones.ndim != 2 or zones.shape[1] != 3 or not np.all(np.isfinite(zones)) or np.any(zones[:, 2] <= 0):
        raise ValueError(f"no_fly_zones must be a (Z, 3) array of finite cx, cy, radius > 0; got {value!r}")
    return zones.copy()
