"""collect_fleet: every robot's real transitions, one tick of a floor per (scene, t), reproducible by seed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from worldmodel.data.batch import Transitions
from worldmodel.envs.fleet_collect import (ACCEL, RESPONSE_S, collect_fleet, fleet_episodes, random_policy,
                                           task_policy)
from worldmodel.envs.warehouse import (EPISODE_STEPS, POS_DIMS, SHELF_DIMS, TASK_DIMS, VEL_DIMS, WarehouseFloor)

ROBOTS, STEPS = 4, 25
S = 28


class NoNoise:
    """A generator whose Gaussian noise is zero: the "task" policy's known answer."""

    def normal(self, loc: float, scale: float, size: tuple[int, ...]) -> np.ndarray:
        return np.zeros(size)


def same(a: Transitions, b: Transitions) -> bool:
    return all(np.array_equal(getattr(a, f.name), getattr(b, f.name))
               for f in dataclasses.fields(Transitions) if f.name != "timestamp")


def test_rows_are_every_robots_floor_episode_in_time_order() -> None:
    data = collect_fleet(ROBOTS, episodes=2, seed=3, steps=STEPS)
    assert len(data) == 2 * ROBOTS * STEPS and data.obs_dim == S and data.act_dim == 2
    assert set(data.scene) == {"warehouse-3-0", "warehouse-3-1"}
    assert set(data.agent_id) == {f"robot-{i:04d}" for i in range(ROBOTS)}
    assert np.all(data.eps_id == data.scene + "/" + data.agent_id) and np.all(data.model_version == "")
    assert np.all(np.abs(data.actions) <= 1.0) and not data.terminateds.any()
    for eps in dict.fromkeys(data.eps_id):
        rows = np.flatnonzero(data.eps_id == eps)
        assert np.all(np.diff(rows) == 1), "an episode's rows are contiguous"
        np.testing.assert_array_equal(data.t[rows], np.arange(STEPS))
        np.testing.assert_array_equal(data.new_obs[rows[:-1]], data.obs[rows[1:]])
        np.testing.assert_array_equal(data.truncateds[rows], np.arange(STEPS) == STEPS - 1)
    # Rows with equal (scene, t) are one tick of one floor: every robot once, at one time.
    ticks = {}
    for scene, t, agent, stamp in zip(data.scene, data.t, data.agent_id, data.timestamp):
        ticks.setdefault((scene, t), []).append((agent, stamp))
    assert len(ticks) == 2 * STEPS
    assert all(len({a for a, _ in rows}) == ROBOTS and len({s for _, s in rows}) == 1 for rows in ticks.values())


def test_rows_are_the_floors_own_transitions_and_replay_exactly() -> None:
    seed = 5
    episode = next(fleet_episodes(ROBOTS, episodes=1, seed=seed, steps=STEPS))
    data = episode.transitions()
    robot_2 = data.agent_id == "robot-0002"
    np.testing.assert_array_equal(data.obs[robot_2], episode.obs[:, 2])
    np.testing.assert_array_equal(data.rewards[robot_2], episode.rewards[:, 2])
    assert episode.paths.shape == (STEPS + 1, ROBOTS, 2) and episode.path_collisions.shape == (STEPS + 1, ROBOTS)
    assert episode.humans.shape[0] == STEPS + 1
    # A fresh floor reset as collection reset it and driven with the logged actions gives the logged states.
    floor = WarehouseFloor(robots=ROBOTS, seed=seed)
    reset_seed = int(np.random.SeedSequence(seed).spawn(2)[0].generate_state(1)[0])
    obs, _ = floor.reset(seed=reset_seed)
    np.testing.assert_array_equal(obs, episode.obs[0])
    for t in range(STEPS):
        obs, rewards, *_ = floor.step(episode.actions[t])
        np.testing.assert_array_equal(obs, episode.new_obs[t])
        np.testing.assert_array_equal(rewards, episode.rewards[t])


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b = collect_fleet(3, 1, seed=1, steps=10), collect_fleet(3, 1, seed=1, steps=10)
    assert same(a, b)
    assert not np.array_equal(a.obs, collect_fleet(3, 1, seed=2, steps=10).obs)


def test_task_policy_known_answer_heads_for_the_target_and_slides_along_a_shelf() -> None:
    obs = np.zeros((3, S), np.float32)
    obs[:, SHELF_DIMS] = [5.0, 5.0]  # far from any shelf
    obs[0, TASK_DIMS] = [0.5, 0.0]  # near target: desired velocity 0.5 m/s along x
    obs[1, TASK_DIMS] = [0.5, 0.0]
    obs[1, VEL_DIMS] = [0.5, 0.0]  # already at the desired velocity
    obs[2, TASK_DIMS] = [0.5, 0.5]  # towards a shelf face 0.4 m above: only the x part is kept
    obs[2, SHELF_DIMS] = [0.0, 0.4]
    obs[:, POS_DIMS] = 0.0
    act = task_policy(NoNoise())(obs)  # type: ignore[arg-type]
    scale = 1.0 / (ACCEL * RESPONSE_S)
    np.testing.assert_allclose(act, [[0.5 * scale, 0.0], [0.0, 0.0], [0.5 * scale, 0.0]], atol=1e-6)
    assert act.dtype == np.float32
    far = obs[:1].copy()
    far[0, TASK_DIMS] = [30.0, 0.0]  # far target: full throttle, clipped to the action box
    np.testing.assert_allclose(task_policy(NoNoise())(far), [[1.0, 0.0]])  # type: ignore[arg-type]


def test_the_task_policy_delivers_where_random_actions_do_not() -> None:
    robots, steps = 6, 400
    task = sum(int(e.deliveries.sum()) for e in fleet_episodes(robots, 1, seed=0, policy="task", steps=steps))
    rand = sum(int(e.deliveries.sum()) for e in fleet_episodes(robots, 1, seed=0, policy="random", steps=steps))
    assert task > rand and task >= 1
    assert random_policy(np.random.default_rng(0))(np.zeros((5, S))).shape == (5, 2)


@pytest.mark.parametrize("kwargs, message", [
    ({"robots": 0}, "robots must be >= 1"),
    ({"episodes": 0}, "episodes must be >= 1"),
    ({"steps": 0}, f"steps must be in 1..{EPISODE_STEPS}"),
    ({"steps": EPISODE_STEPS + 1}, f"steps must be in 1..{EPISODE_STEPS}"),
    ({"seed": -1}, "seed must be an int >= 0"),
    ({"policy": "genius"}, "unknown policy 'genius'"),
])
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        collect_fleet(**{"robots": 2, "episodes": 1, "steps": 5, **kwargs})
