"""Warehouse-v1: contacts, shelves, tasks, humans, seeding, the floor plan and the gymnasium entry points."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from worldmodel.envs import WAREHOUSE_ID, make_env, space_spec
from worldmodel.envs.warehouse import (
    DELIVERY_REWARD,
    DISTANCE_COST,
    DT,
    EPISODE_STEPS,
    MAX_SPEED,
    OBS_DIM,
    POS_DIMS,
    ROBOT_RADIUS,
    TASK_DIMS,
    VEL_DIMS,
    WarehouseEnv,
    WarehouseFloor,
)
from worldmodel.envs.warehouse_layout import Layout, layout_for, nearest_on_rects

OPEN = Layout(10.0, 10.0, np.zeros((0, 4)), stations=[[1.0, 1.0]], picks=[[9.0, 9.0]])
SHELF = Layout(10.0, 10.0, [[4.0, 4.0, 6.0, 6.0]], stations=[[1.0, 1.0]], picks=[[9.0, 9.0]])


def _floor(layout: Layout, robots_pos, robots_vel, humans_pos=None, humans_vel=None,
           bumper: bool = True) -> WarehouseFloor:
    """A noiseless floor with agents placed by hand."""
    humans = 0 if humans_pos is None else len(humans_pos)
    floor = WarehouseFloor(len(robots_pos), humans, layout, action_noise=0.0, bumper=bumper)
    options = {"robots_pos": robots_pos, "robots_vel": robots_vel}
    if humans:
        options |= {"humans_pos": humans_pos, "humans_vel": humans_vel}
    floor.reset(seed=0, options=options)
    return floor


def test_head_on_robots_are_pushed_apart_with_averaged_normal_velocities() -> None:
    p0, v0 = np.array([[4.6, 5.0], [5.3, 5.0]]), np.array([[1.0, 0.5], [-0.5, 0.0]])
    floor = _floor(OPEN, p0, v0, bumper=False)
    obs, rewards, terminated, truncated, info = floor.step(np.zeros((2, 2)))
    # Expected by hand: free flight, then each moves back half the overlap along the normal.
    p = p0 + v0 * DT
    n = (p[1] - p[0]) / np.linalg.norm(p[1] - p[0])
    overlap = 2 * ROBOT_RADIUS - np.linalg.norm(p[1] - p[0])
    np.testing.assert_allclose(obs[:, POS_DIMS], p + np.outer([-0.5, 0.5], n) * overlap, atol=1e-5)
    assert np.linalg.norm(obs[1, POS_DIMS] - obs[0, POS_DIMS]) >= 2 * ROBOT_RADIUS - 1e-5
    vel = obs[:, VEL_DIMS].astype(np.float64)
    np.testing.assert_allclose(vel @ n, [(v0 @ n).mean()] * 2, atol=1e-5)  # normal parts averaged
    np.testing.assert_allclose(vel - np.outer(vel @ n, n), v0 - np.outer(v0 @ n, n), atol=1e-5)  # tangents kept
    np.testing.assert_array_equal(info["collisions"], [1, 1])
    np.testing.assert_array_equal(info["shelf_collisions"], [0, 0])
    distance = np.linalg.norm(obs[:, POS_DIMS] - obs[:, TASK_DIMS], axis=1)
    np.testing.assert_allclose(rewards, -DISTANCE_COST * distance - 1.0, atol=1e-5)
    assert not terminated.any() and not truncated.any()


def test_separating_robots_that_touch_keep_their_velocities() -> None:
    p0, v0 = np.array([[4.75, 5.0], [5.25, 5.0]]), np.array([[-0.2, 0.0], [0.2, 0.0]])
    floor = _floor(OPEN, p0, v0, bumper=False)
    obs, *_, info = floor.step(np.zeros((2, 2)))
    np.testing.assert_allclose(obs[:, VEL_DIMS], v0, atol=1e-6)
    np.testing.assert_array_equal(info["collisions"], [1, 1])  # they still overlapped this step


def test_a_bumper_halts_robots_that_touch_and_they_start_again_from_rest() -> None:
    p0, v0 = np.array([[4.6, 5.0], [5.3, 5.0], [8.0, 8.0]]), np.array([[1.0, 0.5], [-0.5, 0.0], [1.0, 0.0]])
    floor, free = _floor(OPEN, p0, v0), _floor(OPEN, p0, v0, bumper=False)
    obs, *_, info = floor.step(np.zeros((3, 2)))
    free_obs, *_ = free.step(np.zeros((3, 2)))
    np.testing.assert_array_equal(info["collisions"], [1, 1, 0])
    np.testing.assert_allclose(obs[:2, VEL_DIMS], 0.0)  # the pair is halted where the contact pushed it
    np.testing.assert_allclose(obs[:, POS_DIMS], free_obs[:, POS_DIMS], atol=1e-6)
    np.testing.assert_allclose(obs[2, VEL_DIMS], v0[2], atol=1e-6)  # the robot clear of them drives on
    obs, *_ = floor.step(np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]))  # backing away: from rest
    np.testing.assert_allclose(obs[:2, VEL_DIMS], [[-0.2, 0.0], [0.2, 0.0]], atol=1e-6)


def test_a_robot_touching_a_human_counts_a_collision_and_humans_push_too() -> None:
    floor = _floor(OPEN, np.array([[4.6, 5.0]]), np.array([[1.0, 0.0]]), np.array([[5.2, 5.0]]), np.zeros((1, 2)))
    obs, *_, info = floor.step(np.zeros((1, 2)))
    assert info["collisions"][0] == 1
    gap = np.linalg.norm(info["humans_pos"][0] - obs[0, POS_DIMS])
    assert gap >= 2 * ROBOT_RADIUS - 1e-5


def test_a_robot_driven_into_a_shelf_is_projected_out_and_stopped_along_the_normal() -> None:
    floor = _floor(SHELF, np.array([[3.6, 5.0]]), np.array([[1.2, 0.6]]))
    obs, rewards, *_, info = floor.step(np.zeros((1, 2)))
    np.testing.assert_allclose(obs[0, POS_DIMS], [4.0 - ROBOT_RADIUS, 5.0 + 0.6 * DT], atol=1e-5)
    np.testing.assert_allclose(obs[0, VEL_DIMS], [0.0, 0.6], atol=1e-6)
    assert info["shelf_collisions"][0] == 1 and info["collisions"][0] == 0
    distance = np.linalg.norm(obs[0, POS_DIMS] - obs[0, TASK_DIMS])
    np.testing.assert_allclose(rewards[0], -DISTANCE_COST * distance - 1.0, atol=1e-5)


def test_a_shelf_corner_pushes_out_radially_and_a_wall_stops_a_robot() -> None:
    speed = 1.4 / np.sqrt(2)
    floor = _floor(SHELF, np.array([[3.72, 3.72], [0.35, 7.0]]), np.array([[speed, speed], [-1.0, 0.0]]))
    obs, *_, info = floor.step(np.zeros((2, 2)))
    corner_gap = obs[0, POS_DIMS] - np.array([4.0, 4.0])
    np.testing.assert_allclose(np.linalg.norm(corner_gap), ROBOT_RADIUS, atol=1e-5)
    np.testing.assert_allclose(corner_gap[0], corner_gap[1], atol=1e-5)  # along the diagonal
    np.testing.assert_allclose(obs[0, VEL_DIMS], [0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(obs[1, POS_DIMS], [ROBOT_RADIUS, 7.0], atol=1e-5)
    np.testing.assert_allclose(obs[1, VEL_DIMS], [0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(info["shelf_collisions"], [1, 1])


def test_tasks_go_pick_then_drop_then_a_new_pick_with_one_delivery() -> None:
    layout = Layout(10.0, 10.0, np.zeros((0, 4)), stations=[[2.3, 2.0]], picks=[[2.0, 2.0]])
    floor = WarehouseFloor(1, 0, layout, action_noise=0.0)
    obs, _ = floor.reset(seed=0, options={"robots_pos": [[2.2, 2.0]]})
    np.testing.assert_array_equal(obs[0, TASK_DIMS], [2.0, 2.0])
    obs, rewards, *_, info = floor.step(np.zeros((1, 2)))  # at the pick point
    np.testing.assert_allclose(obs[0, TASK_DIMS], [2.3, 2.0], atol=1e-6)
    assert info["deliveries"][0] == 0 and not info["is_success"][0]
    obs, rewards, *_, info = floor.step(np.zeros((1, 2)))  # at the station
    assert info["deliveries"][0] == 1 and info["is_success"][0]
    np.testing.assert_allclose(obs[0, TASK_DIMS], [2.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(rewards[0], DELIVERY_REWARD - DISTANCE_COST * 0.1, atol=1e-5)


def test_the_same_seed_gives_the_same_episode() -> None:
    def run(seed: int) -> list[np.ndarray]:
        floor = WarehouseFloor(20, 3, seed=seed)
        obs, info = floor.reset()
        out = [obs, info["humans_pos"]]
        actions = np.random.default_rng(0).uniform(-1, 1, size=(30, 20, 2))
        for a in actions:
            obs, rewards, _, _, info = floor.step(a)
            out += [obs, rewards, info["humans_pos"], info["collisions"]]
        return out

    for a, b in zip(run(3), run(3)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(run(3)[0], run(4)[0])
    assert np.array_equal(WarehouseFloor(5, seed=9).reset()[0], WarehouseFloor(5).reset(seed=9)[0])


def test_a_busy_floor_keeps_everyone_out_of_shelves_walls_and_over_speed() -> None:
    floor = WarehouseFloor(60, 8, seed=1)
    obs, info = floor.reset()
    rects = floor.layout.obstacles
    rng = np.random.default_rng(1)
    for _ in range(60):
        toward = obs[:, TASK_DIMS] - obs[:, POS_DIMS]
        obs, _, _, _, info = floor.step(np.clip(toward + rng.normal(0, 0.5, toward.shape), -1, 1))
        agents = np.concatenate([obs[:, POS_DIMS], info["humans_pos"]]).astype(np.float64)
        gap = np.linalg.norm(agents[:, None] - nearest_on_rects(agents, rects), axis=-1)
        assert gap.min() >= ROBOT_RADIUS - 1e-4
        speeds = np.linalg.norm(np.concatenate([obs[:, VEL_DIMS], info["humans_vel"]]), axis=1)
        assert speeds.max() <= MAX_SPEED + 1e-5


def test_humans_walk_along_the_walkways_at_about_walking_speed() -> None:
    layout = layout_for(30)
    floor = WarehouseFloor(1, 6, layout, seed=2)
    floor.reset(options={"robots_pos": [[layout.width - 0.5, 0.5]]})  # out of the humans' way
    path = [floor.step(np.zeros((1, 2)))[-1]["humans_pos"] for _ in range(200)]
    path = np.stack(path).astype(np.float64)  # (T, H, 2)
    speed = np.linalg.norm(np.diff(path, axis=0), axis=-1).mean() / DT
    assert 0.6 < speed <= 1.05
    off_x = np.abs(path[..., 0, None] - layout.aisles_x).min(-1)
    off_y = np.abs(path[..., 1, None] - layout.aisles_y).min(-1)
    assert np.minimum(off_x, off_y).max() < 0.3


@pytest.mark.parametrize("robots", [1, 50, 200])
def test_layout_for_scales_the_floor_with_the_fleet(robots: int) -> None:
    layout = layout_for(robots)
    if robots >= 50:
        assert 9 <= layout.width * layout.height / robots <= 15
    assert np.all(layout.shelves[:, :2] >= 0) and np.all(layout.shelves[:, 2] <= layout.width)
    assert np.all(layout.shelves[:, 3] <= layout.height)
    for points in (layout.picks, layout.stations):
        gap = np.linalg.norm(points[:, None] - nearest_on_rects(points, layout.obstacles), axis=-1).min(axis=1)
        assert gap.min() >= ROBOT_RADIUS + 0.2  # a robot fits at every task point
    floor = WarehouseFloor(robots, seed=0)
    obs, _ = floor.reset()
    obs, rewards, *_ = floor.step(np.zeros((robots, 2)))
    assert obs.shape == (robots, OBS_DIM) and rewards.shape == (robots,)
    assert layout_for(50).width == 29.0 and layout_for(50).height == 19.0


def test_bad_arguments_are_refused_with_the_value_named() -> None:
    with pytest.raises(ValueError, match="robots must be an int >= 1, got 0"):
        WarehouseFloor(0)
    with pytest.raises(ValueError, match="free room"):
        WarehouseFloor(400, layout=layout_for(1)).reset(seed=0)
    floor = WarehouseFloor(3, 0, OPEN)
    with pytest.raises(RuntimeError, match="has not started"):
        floor.step(np.zeros((3, 2)))
    floor.reset(seed=0)
    with pytest.raises(ValueError, match=r"finite \(3, 2\) array, got shape \(2, 2\)"):
        floor.step(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="unknown reset options"):
        floor.reset(options={"robot_pos": [[1, 1]] * 3})
    with pytest.raises(ValueError, match="every shelf needs xlo < xhi"):
        Layout(5.0, 5.0, [[2.0, 2.0, 1.0, 3.0]], [[1.0, 1.0]], [[2.0, 4.0]])


def test_the_floor_truncates_every_robot_at_once_and_then_needs_a_reset() -> None:
    floor = WarehouseFloor(4, 0, OPEN, seed=0, episode_steps=3)
    floor.reset()
    flags = [floor.step(np.zeros((4, 2)))[3] for _ in range(3)]
    assert [f.tolist() for f in flags] == [[False] * 4, [False] * 4, [True] * 4]
    with pytest.raises(RuntimeError, match="ended after 3 steps"):
        floor.step(np.zeros((4, 2)))


def test_make_vec_is_one_floor_that_autoresets_on_the_next_step() -> None:
    envs = gymnasium.make_vec(WAREHOUSE_ID, num_envs=50, max_episode_steps=3)
    assert envs.num_envs == 50 and envs.single_observation_space.shape == (OBS_DIM,)
    assert envs.single_action_space.shape == (2,) and envs.metadata["autoreset_mode"].value == "NextStep"
    obs, _ = envs.reset(seed=5)
    assert obs.shape == (50, OBS_DIM) and envs.observation_space.contains(obs)
    for step in range(3):
        obs, rewards, terminated, truncated, info = envs.step(envs.action_space.sample())
        assert truncated.all() == (step == 2) and not terminated.any()
    last = obs
    obs, rewards, terminated, truncated, info = envs.step(envs.action_space.sample())  # the floor resets
    assert not (terminated | truncated).any() and np.all(rewards == 0)
    assert not np.allclose(obs[:, POS_DIMS], last[:, POS_DIMS]) and np.all(obs[:, VEL_DIMS] == 0)
    obs, *_ = envs.step(envs.action_space.sample())  # and goes on
    assert envs.observation_space.contains(obs)
    envs.close()


def test_make_env_gives_one_robot_with_the_per_robot_spaces() -> None:
    spec = space_spec(make_env(WAREHOUSE_ID), WAREHOUSE_ID)
    assert (spec.obs_dim, spec.act_dim, spec.act_low, spec.act_high) == (28, 2, (-1.0, -1.0), (1.0, 1.0))
    env = make_env(WAREHOUSE_ID)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and env.unwrapped.floor.humans == 2
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert isinstance(reward, float) and isinstance(info["collisions"], int) and info["task"].shape == (2,)
    assert env.spec.max_episode_steps == EPISODE_STEPS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check_env(WarehouseEnv())
