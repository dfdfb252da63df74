"""Collect whole floor episodes of the warehouse: every robot's transitions, one batched floor step per tick.

Rows carry the floor episode in ``scene`` and the fleet step in ``t``, so rows with equal (scene, t) are
one tick of one floor and a learner can rebuild who was near whom.

Dimensions: ``T`` ticks, ``N`` robots, ``H`` humans, ``S`` observation size, ``A`` action size.
"""

from __future__ import annotations

import datetime
import sys
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from worldmodel.data.batch import Transitions
from worldmodel.envs.warehouse import (ACCEL, EPISODE_STEPS, MAX_SPEED, POS_DIMS, SHELF_DIMS, TASK_DIMS, VEL_DIMS,
                                       WarehouseFloor)
from worldmodel.envs.warehouse_layout import Layout

Policy = Callable[[np.ndarray], np.ndarray]
"""Maps the robots' observations (N, S) to their actions (N, A) in [-1, 1]."""

TASK_GAIN = 1.0
"""Desired speed (m/s) per metre to the target, up to ``CRUISE`` (the "task" policy)."""
CRUISE = 0.8 * MAX_SPEED
"""The "task" policy's top speed: below the clamp, so braking stays possible."""
RESPONSE_S = 0.5
"""Seconds in which the "task" policy means to close the gap to its desired velocity."""
SHELF_CLEARANCE = 0.6
"""Metres from a shelf's surface to the robot's centre below which the "task" policy slides along it."""
POLICY_NOISE = 0.3
"""Standard deviation of the "task" policy's Gaussian action noise: varied data, and traffic."""


def task_policy(rng: np.random.Generator) -> Policy:
    """A noisy proportional controller towards each robot's task target that slides along shelves.

    It ignores other agents: an ordinary fleet controller, whose traffic makes contacts to learn from.
    """

    def act(obs: np.ndarray) -> np.ndarray:
        to_target = obs[:, TASK_DIMS] - obs[:, POS_DIMS]  # (N, 2)
        distance = np.linalg.norm(to_target, axis=1, keepdims=True)
        desired = to_target * np.minimum(TASK_GAIN, CRUISE / np.maximum(distance, 1e-6))  # (N, 2)
        # Near a shelf, drop the part of the desired velocity that points into it: slide along its face.
        to_shelf = obs[:, SHELF_DIMS]  # (N, 2) from the centre to the nearest shelf or wall point
        gap = np.linalg.norm(to_shelf, axis=1, keepdims=True)
        normal = to_shelf / np.maximum(gap, 1e-6)
        into = np.maximum((desired * normal).sum(axis=1, keepdims=True), 0.0) * (gap < SHELF_CLEARANCE)
        desired = desired - into * normal
        action = (desired - obs[:, VEL_DIMS]) / (ACCEL * RESPONSE_S) + rng.normal(0.0, POLICY_NOISE, desired.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    return act


def random_policy(rng: np.random.Generator) -> Policy:
    """Actions uniform in [-1, 1]^2."""
    return lambda obs: rng.uniform(-1.0, 1.0, size=(len(obs), 2)).astype(np.float32)


POLICIES: dict[str, Callable[[np.random.Generator], Policy]] = {"task": task_policy, "random": random_policy}
"""The behaviour policies ``collect_fleet`` accepts by name."""


@dataclass(frozen=True)
class FloorEpisode:
    """One floor episode as stepped: per-tick arrays of every robot, and what the floor counted."""

    scene: str
    """``f"warehouse-{seed}-{episode}"``, the ``scene`` of its rows."""
    layout: Layout
    obs: np.ndarray
    """(T, N, S) observations before each tick."""
    actions: np.ndarray
    """(T, N, A) actions."""
    rewards: np.ndarray
    """(T, N) rewards."""
    new_obs: np.ndarray
    """(T, N, S) observations after each tick."""
    truncateds: np.ndarray
    """(T, N) True on the last tick (the floor episode ends for every robot at once)."""
    time: np.ndarray
    """(T,) datetime64[us] UTC wall-clock time of each tick."""
    collisions: np.ndarray
    """(T, N) robot-robot and robot-human contacts per robot and tick."""
    shelf_collisions: np.ndarray
    """(T, N) shelf and wall contacts per robot and tick."""
    deliveries: np.ndarray
    """(T, N) deliveries per robot and tick."""
    humans: np.ndarray
    """(T + 1, H, 2) human positions, before the first tick and after each."""

    @property
    def paths(self) -> np.ndarray:
        """(T + 1, N, 2) robot positions, before the first tick and after each."""
        return np.concatenate([self.obs[:1, :, POS_DIMS], self.new_obs[:, :, POS_DIMS]])

    @property
    def path_collisions(self) -> np.ndarray:
        """(T + 1, N) robot-robot and robot-human contacts aligned with ``paths`` (none before the first tick)."""
        return np.concatenate([np.zeros_like(self.collisions[:1]), self.collisions])

    def transitions(self) -> Transitions:
        """Its rows in the log schema, grouped by robot (``agent_id`` "robot-0007") in time order."""
        ticks, robots = self.rewards.shape
        agents = np.array([f"robot-{i:04d}" for i in range(robots)], dtype=object)

        def by_robot(x: np.ndarray) -> np.ndarray:
            return np.swapaxes(x, 0, 1).reshape(ticks * robots, *x.shape[2:])  # (N*T, ...)

        return Transitions.build(
            obs=by_robot(self.obs), actions=by_robot(self.actions), rewards=by_robot(self.rewards),
            new_obs=by_robot(self.new_obs), terminateds=np.zeros(ticks * robots, bool),
            truncateds=by_robot(self.truncateds), eps_id=np.repeat(self.scene + "/" + agents, ticks),
            agent_id=np.repeat(agents, ticks), t=np.tile(np.arange(ticks), robots), model_version="",
            timestamp=np.tile(self.time, robots), scene=self.scene)


def fleet_episodes(robots: int, episodes: int, seed: int = 0, policy: str | Policy = "task",
                   steps: int = EPISODE_STEPS, progress: bool = False) -> Iterator[FloorEpisode]:
    """Step one floor of ``robots`` robots (and its default humans) through ``episodes`` floor episodes.

    Args:
        robots: N >= 1 robots on the floor (its layout grows with them).
        episodes: floor episodes, >= 1; each is ``steps`` ticks of every robot.
        seed: >= 0; fixes the floor, its resets and the policy's noise, so equal arguments give equal data.
        policy: one of ``POLICIES`` ("task": a noisy controller towards each task; "random"), or a callable.
        steps: ticks per floor episode, 1..``EPISODE_STEPS``; the last tick is truncated for every robot.
        progress: show a tqdm bar of ticks on stderr.

    Yields:
        Each ``FloorEpisode`` in turn, its ``scene`` ``f"warehouse-{seed}-{episode}"``.

    Raises:
        ValueError: an argument out of range or an unknown policy, naming it.
    """
    _check_arguments(robots, episodes, seed, policy, steps)
    floor_stream, action_stream = np.random.SeedSequence(int(seed)).spawn(2)
    act = policy if callable(policy) else POLICIES[policy](np.random.default_rng(action_stream))
    floor = WarehouseFloor(robots=robots, seed=int(seed))
    resets = floor_stream.generate_state(episodes)
    with tqdm(total=episodes * steps, desc=f"collect {robots} robots", unit="tick", file=sys.stderr,
              disable=not progress) as bar:
        for episode in range(episodes):
            yield _run_episode(floor, act, int(resets[episode]), steps, f"warehouse-{seed}-{episode}", bar)


def collect_fleet(robots: int, episodes: int, seed: int = 0, policy: str | Policy = "task",
                  steps: int = EPISODE_STEPS, progress: bool = False) -> Transitions:
    """The rows of ``fleet_episodes``'s episodes (see there): ``episodes * robots * steps`` transitions,
    grouped by floor episode, then by robot, in time order."""
    return Transitions.concat([episode.transitions()
                               for episode in fleet_episodes(robots, episodes, seed, policy, steps, progress)])


def _check_arguments(robots: int, episodes: int, seed: int, policy: str | Policy, steps: int) -> None:
    if robots < 1:
        raise ValueError(f"robots must be >= 1, got {robots}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not 1 <= steps <= EPISODE_STEPS:
        raise ValueError(f"steps must be in 1..{EPISODE_STEPS} (one floor episode), got {steps}")
    # A negative seed would put a '-' into the scene and make scenes of different seeds collide.
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if not callable(policy) and policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {list(POLICIES)}")


def _run_episode(floor: WarehouseFloor, act: Policy, seed: int, steps: int, scene: str, bar: tqdm) -> FloorEpisode:
    """Reset the floor with ``seed`` and step it ``steps`` ticks, all robots at once each tick."""
    obs, info = floor.reset(seed=seed)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in (
        "obs", "actions", "rewards", "new_obs", "time", "collisions", "shelf_collisions", "deliveries")}
    humans = [np.array(info["humans_pos"])]
    for _ in range(steps):  # ticks only: each is one batched step of every robot and human
        actions = act(obs)  # (N, A)
        new_obs, rewards, _, _, info = floor.step(actions)
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        for name, value in (("obs", obs), ("actions", actions), ("rewards", rewards), ("new_obs", new_obs),
                            ("time", np.datetime64(now, "us")), ("collisions", info["collisions"]),
                            ("shelf_collisions", info["shelf_collisions"]), ("deliveries", info["deliveries"])):
            columns[name].append(np.array(value))  # a copy: the floor may reuse its buffers
        humans.append(np.array(info["humans_pos"]))
        obs = new_obs
        bar.update()
    stacked = {name: np.stack(values) for name, values in columns.items()}  # (T, N, ...) and time (T,)
    truncateds = np.zeros(stacked["rewards"].shape, bool)
    truncateds[-1] = True
    return FloorEpisode(scene=scene, layout=floor.layout, truncateds=truncateds,
                        humans=np.stack(humans).reshape(steps + 1, -1, 2), **stacked)
