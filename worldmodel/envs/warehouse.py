"""Warehouse-v1: a fleet of robots and some humans on a floor of shelves, stepped together.

Each robot is a disc driven by a noisy acceleration in [-1, 1]^2; robots and humans that touch push
each other apart and a robot's bumper halts it (so a robot's next state depends on its neighbours),
shelves and walls stop them.
Robots carry tasks: drive to a pick point, then to a drop station (a delivery), then a new pick.
``WarehouseFloor`` is the numpy core; ``WarehouseVectorEnv`` is one floor as a gymnasium VectorEnv
(one sub-env per robot) and ``WarehouseEnv`` one robot on a floor with humans.

Per-robot observation, float32, (S,) = (28,): own position and velocity (``PHYS_DIMS``, what
dynamics models predict), then features computed from every agent's physical state and the layout
by ``warehouse_features.observe``: the task target, ``M`` neighbour slots and the vector to the
nearest shelf or wall. Dimensions: ``N`` robots, ``H`` humans, ``M`` neighbour slots, ``A`` = 2.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from worldmodel.envs import warehouse_physics as physics
from worldmodel.envs.warehouse_layout import Layout, draw_crossings, draw_starts, layout_for, nearest_crossings, project_out

WAREHOUSE_ID = "Warehouse-v1"
"""Gymnasium id of the warehouse floor (v1: robots have bumpers, ``BUMPER``; v0's contact only averaged speeds)."""
DEFAULT_ROBOTS = 50
"""N, the robots on a floor when nobody says: the issue's 50-robot floor (`wm collect`, `wm eval`, `wm serve`)."""
DT = 0.1
"""Step, seconds (10 Hz)."""
ROBOT_RADIUS = 0.3
"""Radius of every robot and human, metres."""
MAX_SPEED = 1.5
"""Bound on every agent's speed (norm), m/s."""
ACCEL = 2.0
"""Acceleration of a unit action, m/s^2."""
ACTION_NOISE = 0.05
"""Std of the Gaussian noise added to every action (in action units): actuators are noisy."""
HUMAN_SPEED = 1.0
"""Walking speed of the humans, m/s."""
NEIGHBOURS = 4
"""M, the neighbour slots of an observation."""
SENSE_RADIUS = 3.0
"""Agents farther than this (centre to centre, metres) are not sensed."""
TASK_RADIUS = 0.5
"""A robot within this distance of its target has reached it (humans: their waypoint)."""
EPISODE_STEPS = 600
"""Steps of a floor episode (60 s); every robot is truncated at once, nothing terminates."""
DISTANCE_COST = 0.1
"""Reward per metre between a robot's new position and its target, per step (negative)."""
COLLISION_COST = 1.0
"""Reward per robot-robot, robot-human or shelf contact of a robot, per step (negative)."""
DELIVERY_REWARD = 10.0
"""Reward of a delivery."""
BUMPER = True
"""A robot that touches another robot or a human is halted by its bumper: its velocity is zero after that
step and it starts again from rest, as a warehouse robot's safety bumper stops it. Without it
(``bumper=False``) contact only averages a pair's approaching speeds, and a robot that drives through
traffic loses almost no time (docs/warehouse.md compares both floors)."""

KIND_NONE, KIND_ROBOT, KIND_HUMAN = 0, 1, 2
"""What fills a neighbour slot: nothing (the slot is all zeros), a robot, a human."""
SLOT_SIZE = 5
"""One neighbour slot: [dx, dy, dvx, dvy, kind], the other agent relative to the robot (other minus own)."""
SLOT_POS = slice(0, 2)
"""Where a slot carries the other agent's relative position (dx, dy)."""
SLOT_VEL = slice(2, 4)
"""Where a slot carries the other agent's relative velocity (dvx, dvy)."""
SLOT_KIND = 4
"""Where a slot carries the other agent's kind."""

POS_DIMS = slice(0, 2)
"""Where the observation carries the robot's position (x, y)."""
VEL_DIMS = slice(2, 4)
"""Where the observation carries the robot's velocity (vx, vy)."""
PHYS_DIMS = slice(0, 4)
"""The physical state, what dynamics models predict: position and velocity."""
TASK_DIMS = slice(4, 6)
"""Where the observation carries the current target point (a pick point, then a drop station)."""
NEIGHBOUR_DIMS = slice(6, 6 + SLOT_SIZE * NEIGHBOURS)
"""M slots of SLOT_SIZE, nearest first; reshape to (..., M, SLOT_SIZE)."""
SHELF_DIMS = slice(NEIGHBOUR_DIMS.stop, NEIGHBOUR_DIMS.stop + 2)
"""Vector from the robot's centre to the nearest point of the nearest shelf or wall."""
OBS_DIM = SHELF_DIMS.stop
"""S, the observation size (28)."""

_OPTION_KEYS = frozenset({"robots_pos", "robots_vel", "humans_pos", "humans_vel"})


class WarehouseFloor:
    """N robots and H humans on one floor, all moved by one batched step.

    ``info`` (reset and step) carries per-robot ``collisions`` (N,) int (robot-robot and robot-human
    contacts this step), ``shelf_collisions`` (N,) int (shelves and walls), ``deliveries`` (N,) int,
    ``is_success`` (N,) bool (delivered this step), ``task`` (N, 2) the targets, ``slot_index`` (N, M)
    long (which agent fills each slot: robots 0..N-1, humans N..N+H-1; -1 empty), and the humans'
    ``humans_pos`` and ``humans_vel`` (H, 2). States are kept at float32 precision so the observation
    is the whole physical state.
    """

    def __init__(
        self,
        robots: int = DEFAULT_ROBOTS,
        humans: int | None = None,
        layout: Layout | None = None,
        seed: int | None = None,
        *,
        action_noise: float = ACTION_NOISE,
        episode_steps: int = EPISODE_STEPS,
        bumper: bool = BUMPER,
    ) -> None:
        """Args:
        robots: N >= 1.
        humans: H >= 0; default ``robots // 10``.
        layout: the floor; default ``layout_for(robots)``.
        seed: seed of the first reset that names none.
        action_noise: std of the actuation noise (0: deterministic physics).
        episode_steps: steps until every robot is truncated.
        bumper: robots halt when they touch another agent (``BUMPER``).
        """
        humans = robots // 10 if humans is None and isinstance(robots, (int, np.integer)) else humans
        for name, value, least in (("robots", robots, 1), ("humans", humans, 0), ("episode_steps", episode_steps, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        if not action_noise >= 0:
            raise ValueError(f"action_noise must be >= 0, got {action_noise}")
        if layout is not None and not isinstance(layout, Layout):
            raise ValueError(f"layout must be a Layout, got {type(layout).__name__}")
        # The features (torch) read this module's constants, so they are imported once a floor exists;
        # importing the env stays free of torch.
        from worldmodel.envs.warehouse_features import observe_arrays

        self._observe = observe_arrays
        self.robots, self.humans = int(robots), int(humans)
        self.layout = layout if layout is not None else layout_for(self.robots)
        self.action_noise = float(action_noise)
        self.episode_steps = int(episode_steps)
        self.bumper = bool(bumper)
        self._rng = np.random.default_rng(seed)
        self._kinds = np.repeat([KIND_ROBOT, KIND_HUMAN], [self.robots, self.humans])  # (N + H,)
        self._t: int | None = None

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a floor episode: random free starts, humans at walkway crossings, a pick per robot.

        Args:
            seed: reseeds the floor's random stream; None continues it.
            options: ``robots_pos``, ``robots_vel`` (N, 2) and ``humans_pos``, ``humans_vel`` (H, 2)
                replace the drawn starts (velocities default to 0); a placed human walks from the
                crossing nearest to it.

        Returns:
            obs (N, S) float32, info.
        """
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        options = dict(options or {})
        unknown = sorted(set(options) - _OPTION_KEYS)
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; the floor accepts {sorted(_OPTION_KEYS)}")
        self._node = draw_crossings(self.layout, self.humans, self._rng)  # (H, 2) [row, column]
        humans_pos = _placed(options, "humans_pos", self._waypoints(), self.humans)
        if "humans_pos" in options:
            self._node = nearest_crossings(self.layout, humans_pos)
        starts = draw_starts(self.layout, self.robots, humans_pos, ROBOT_RADIUS, self._rng)
        robots_pos = _placed(options, "robots_pos", starts, self.robots)
        self._pos = _f32(np.concatenate([robots_pos, humans_pos]))
        vel = [_placed(options, f"{who}_vel", np.zeros((k, 2)), k) for who, k in (("robots", self.robots), ("humans", self.humans))]
        self._vel = _f32(np.concatenate(vel))
        self._stage = np.zeros(self.robots, dtype=np.int64)  # 0: to a pick point, 1: to a station
        self._target = self.layout.picks[self._rng.integers(len(self.layout.picks), size=self.robots)]
        self._t = 0
        none = np.zeros(self.robots, dtype=np.int64)
        return self._observation(none, none, none)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Move every agent one step.

        Args:
            actions: (N, A) robot actions, clipped to [-1, 1].

        Returns:
            obs (N, S) float32, rewards (N,) float32, terminated (N,) bool (never), truncated (N,)
            bool (all at once after ``episode_steps``), info.
        """
        if self._t is None or self._t >= self.episode_steps:
            state = "has not started" if self._t is None else f"ended after {self.episode_steps} steps"
            raise RuntimeError(f"the floor episode {state}; call reset()")
        a = np.asarray(actions, dtype=np.float64)
        if a.shape != (self.robots, 2) or not np.all(np.isfinite(a)):
            raise ValueError(f"actions must be a finite ({self.robots}, 2) array, got shape {a.shape}")
        n = self.robots
        walker = physics.walker_actions(self._pos[n:], self._vel[n:], self._waypoints(), HUMAN_SPEED, ACCEL, DT)
        noise = self._rng.normal(size=self._pos.shape) * self.action_noise  # drawn even at std 0: one stream
        command = np.concatenate([np.clip(a, -1.0, 1.0), walker]) + noise  # (N + H, 2)
        pos, vel = physics.integrate(self._pos, self._vel, ACCEL * command, MAX_SPEED, DT)
        pos, vel, contact = physics.resolve_contacts(pos, vel, ROBOT_RADIUS)
        if self.bumper:
            vel = physics.bumper_stop(vel, contact, n)
        pos, vel, depth = project_out(pos, vel, self.layout.obstacles, ROBOT_RADIUS)
        # Contacts can add normal speeds; the bound holds for every agent after every step.
        self._pos, self._vel = _f32(pos), _f32(physics.clamp_speed(vel, MAX_SPEED))
        collisions = contact[:n].sum(axis=1)  # a robot's contacts with robots and humans
        shelf_collisions = (depth[:n] > physics.CONTACT_TOLERANCE).sum(axis=1)
        distance = np.linalg.norm(self._pos[:n] - self._target, axis=-1)
        self._target, self._stage, delivered = physics.advance_tasks(
            self._pos[:n], self._target, self._stage, self.layout, TASK_RADIUS, self._rng)
        self._node = physics.next_crossings(self._node, self._pos[n:], self.layout, TASK_RADIUS, self._rng)
        self._t += 1
        rewards = -DISTANCE_COST * distance - COLLISION_COST * (collisions + shelf_collisions) + DELIVERY_REWARD * delivered
        obs, info = self._observation(collisions, shelf_collisions, delivered.astype(np.int64))
        truncated = np.full(n, self._t >= self.episode_steps)
        return obs, rewards.astype(np.float32), np.zeros(n, dtype=bool), truncated, info

    def _observation(self, collisions: np.ndarray, shelf: np.ndarray, delivered: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        n = self.robots
        pos, vel, task = self._pos.astype(np.float32), self._vel.astype(np.float32), self._target.astype(np.float32)
        obs, slot_index = self._observe(pos[:n], vel[:n], task, pos, vel, self._kinds, self.layout)
        info = {
            "collisions": collisions,
            "shelf_collisions": shelf,
            "deliveries": delivered,
            "is_success": delivered > 0,
            "task": task,
            "slot_index": slot_index,
            "humans_pos": self._pos[n:].astype(np.float32),
            "humans_vel": self._vel[n:].astype(np.float32),
        }
        return obs, info

    def _waypoints(self) -> np.ndarray:
        return self.layout.walkway_nodes[self._node[:, 0], self._node[:, 1]]  # (H, 2)


def observation_space(layout: Layout) -> spaces.Box:
    """Bounds of one robot's observation on ``layout``: Box (S,) float32."""
    reach = max(layout.width, layout.height)
    slot_low = np.array([-SENSE_RADIUS, -SENSE_RADIUS, -2 * MAX_SPEED, -2 * MAX_SPEED, KIND_NONE])
    slot_high = np.array([SENSE_RADIUS, SENSE_RADIUS, 2 * MAX_SPEED, 2 * MAX_SPEED, KIND_HUMAN])
    low, high = np.empty(OBS_DIM), np.empty(OBS_DIM)
    low[POS_DIMS], high[POS_DIMS] = 0.0, (layout.width, layout.height)
    low[VEL_DIMS], high[VEL_DIMS] = -MAX_SPEED, MAX_SPEED
    low[TASK_DIMS], high[TASK_DIMS] = 0.0, (layout.width, layout.height)
    low[NEIGHBOUR_DIMS], high[NEIGHBOUR_DIMS] = np.tile(slot_low, NEIGHBOURS), np.tile(slot_high, NEIGHBOURS)
    low[SHELF_DIMS], high[SHELF_DIMS] = -reach, reach
    return spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)


ACTION_SPACE = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
"""One robot's action: an acceleration command in [-1, 1]^2."""


class WarehouseEnv(gym.Env[np.ndarray, np.ndarray]):
    """One robot on a floor with humans: ``make_env("Warehouse-v1")``, the per-robot spaces."""

    metadata = {"render_modes": []}

    def __init__(self, humans: int = 2, layout: Layout | None = None, action_noise: float = ACTION_NOISE,
                 render_mode: str | None = None, bumper: bool = BUMPER) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode must be None (use warehouse_render for pictures), got {render_mode!r}")
        self.floor = WarehouseFloor(1, humans, layout, action_noise=action_noise, bumper=bumper)
        self.observation_space = observation_space(self.floor.layout)
        self.action_space = ACTION_SPACE

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        obs, info = self.floor.reset(seed, options)
        return obs[0], _one_robot(info)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, rewards, terminated, truncated, info = self.floor.step(np.asarray(action, dtype=np.float64)[None])
        return obs[0], float(rewards[0]), bool(terminated[0]), bool(truncated[0]), _one_robot(info)


class WarehouseVectorEnv(VectorEnv):
    """One floor as a VectorEnv, one sub-env per robot: ``gymnasium.make_vec("Warehouse-v1", num_envs=N)``.

    The floor's episode ends for every robot at once; the step after it resets the whole floor
    (NEXT_STEP autoreset: that step ignores the actions and returns the new first observations
    with zero rewards). ``infos`` is the floor's info.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 50, humans: int | None = None, layout: Layout | None = None,
                 action_noise: float = ACTION_NOISE, max_episode_steps: int = EPISODE_STEPS,
                 render_mode: str | None = None, bumper: bool = BUMPER) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode must be None (use warehouse_render for pictures), got {render_mode!r}")
        self.floor = WarehouseFloor(num_envs, humans, layout, action_noise=action_noise, episode_steps=max_episode_steps,
                                    bumper=bumper)
        self.num_envs = self.floor.robots
        self.render_mode = render_mode
        self.single_observation_space = observation_space(self.floor.layout)
        self.single_action_space = ACTION_SPACE
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._autoreset = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"one floor takes one int seed, got {seed!r}")
        self._autoreset = False
        return self.floor.reset(seed, options)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._autoreset:
            self._autoreset = False
            obs, info = self.floor.reset()
            done = np.zeros(self.num_envs, dtype=bool)
            return obs, np.zeros(self.num_envs, dtype=np.float32), done, done.copy(), info
        obs, rewards, terminated, truncated, info = self.floor.step(actions)
        self._autoreset = bool(np.any(terminated | truncated))
        return obs, rewards, terminated, truncated, info


def _one_robot(info: dict[str, Any]) -> dict[str, Any]:
    """The floor's info for a floor of one robot: its per-robot arrays as scalars and rows."""
    single = {key: info[key][0].item() for key in ("collisions", "shelf_collisions", "deliveries", "is_success")}
    return {**info, **single, "task": info["task"][0], "slot_index": info["slot_index"][0]}


def _f32(a: np.ndarray) -> np.ndarray:
    """``a`` rounded to float32 and kept as float64, so the physics and the observation agree."""
    return a.astype(np.float32).astype(np.float64)


def _placed(options: dict[str, Any], key: str, default: np.ndarray, rows: int) -> np.ndarray:
    if key not in options:
        return default
    value = np.asarray(options[key], dtype=np.float64)
    if value.shape != (rows, 2) or not np.all(np.isfinite(value)):
        raise ValueError(f"reset option {key} must be a finite ({rows}, 2) array, got shape {value.shape}")
    return value
