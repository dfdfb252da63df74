"""Nav2D's dynamics, rewards, endings and no-fly zones; make_env's contract for any gymnasium id."""

from __future__ import annotations

import json
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from worldmodel.envs import NAV2D_ID, SpaceSpec, make_env, register_envs, space_spec
from worldmodel.envs.nav2d import DT, GOAL_DIMS, MAX_EPISODE_STEPS, POS_DIMS, Nav2DEnv

FAR = {"start": (0.0, 0.0), "goal": (4.0, 4.0)}


def _distance(obs: np.ndarray) -> float:
    return float(np.linalg.norm(obs[POS_DIMS].astype(np.float64) - obs[GOAL_DIMS]))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("zones", [0, 3])
def test_check_env_passes_unwrapped(zones: int) -> None:
    check_env(Nav2DEnv(num_no_fly_zones=zones))
    check_env(make_env(NAV2D_ID, num_no_fly_zones=zones).unwrapped)  # has a spec: determinism asserted


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_check_env_passes_through_make() -> None:
    check_env(gymnasium.make(NAV2D_ID))
    check_env(make_env(NAV2D_ID))


def test_reset_with_seed_is_reproducible() -> None:
    env = Nav2DEnv(num_no_fly_zones=2)
    runs = []
    for _ in range(2):
        obs, info = env.reset(seed=7)
        rollout = [obs, info["no_fly_zones"]]
        for _ in range(5):
            rollout.append(env.step(np.array([0.3, -0.7], dtype=np.float32))[0])
        runs.append(rollout)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(env.reset(seed=8)[0], runs[0][0])


def test_one_step_from_rest_matches_semi_implicit_euler() -> None:
    env = Nav2DEnv(action_noise=0.0)
    env.reset(seed=0, options={"start": (1.0, -2.0), "goal": (4.0, 4.0)})
    a = np.array([0.5, -0.25], dtype=np.float32)
    obs, *_ = env.step(a)
    v = a.astype(np.float64) * DT
    p = np.array([1.0, -2.0]) + v * DT
    np.testing.assert_array_equal(obs, np.concatenate([p, v, [4.0, 4.0]]).astype(np.float32))


def test_actions_are_clipped_and_speed_is_bounded() -> None:
    env = Nav2DEnv(action_noise=0.0, max_speed=0.25)
    env.reset(seed=0, options=FAR)
    obs, *_ = env.step(np.array([5.0, -5.0], dtype=np.float32))
    np.testing.assert_allclose(obs[2:4], [0.1, -0.1], rtol=1e-6)  # clipped to [-1, 1] before use
    for _ in range(10):
        obs, *_ = env.step(np.array([1.0, 1.0], dtype=np.float32))
    np.testing.assert_allclose(obs[2:4], [0.25, 0.25])


def test_wall_clips_position_and_zeroes_that_velocity() -> None:
    env = Nav2DEnv(arena=2.0, spawn=2.0, action_noise=0.0)
    env.reset(seed=0, options={"start": (1.999, 0.0), "goal": (-1.0, -1.0)})
    obs, *_ = env.step(np.array([1.0, 0.5], dtype=np.float32))
    assert obs[0] == 2.0 and obs[2] == 0.0
    assert obs[3] == np.float32(0.05)


def test_reward_is_minus_distance_and_observations_stay_in_space() -> None:
    env = Nav2DEnv(arena=3.0, spawn=2.5, max_speed=5.0)  # small arena: the walls get hit
    obs, _ = env.reset(seed=3)
    for _ in range(300):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs in env.observation_space
        assert reward == pytest.approx(-_distance(obs), abs=1e-12)
        assert info["distance"] == -reward
        assert not truncated
        if terminated:
            obs, _ = env.reset()


def test_reaching_the_goal_terminates_with_success() -> None:
    env = Nav2DEnv(action_noise=0.0)
    env.reset(seed=0, options={"start": (0.0, 0.0), "goal": (0.3, 0.0)})
    _, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
    assert terminated and not truncated
    assert info["is_success"] is True and reward == pytest.approx(-0.3)
    env.reset(seed=0, options=FAR)
    _, _, terminated, _, info = env.step(np.zeros(2, dtype=np.float32))
    assert not terminated and info["is_success"] is False


def test_time_limit_truncates_at_200_steps() -> None:
    env = make_env(NAV2D_ID, action_noise=0.0)
    env.reset(seed=0, options=FAR)
    for step in range(1, MAX_EPISODE_STEPS + 1):
        _, _, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
        assert not terminated
        assert truncated == (step == MAX_EPISODE_STEPS)


def test_random_goals_keep_their_distance_from_the_start() -> None:
    env = Nav2DEnv()
    for seed in range(100):
        obs, info = env.reset(seed=seed)
        assert _distance(obs) >= 2.0 - 1e-5 and np.all(np.abs(obs[GOAL_DIMS]) <= 5.0)
        assert info["no_fly_zones"].shape == (0, 3) and info["no_fly_zones"].dtype == np.float32
        assert info["violation"] is False


def test_drawn_zones_avoid_start_and_goal_and_the_first_blocks_the_way() -> None:
    env = Nav2DEnv()
    clearance = env.zone_radius + env.goal_radius
    for seed in range(200):
        obs, info = env.reset(seed=seed, options={"num_no_fly_zones": 3})
        zones = info["no_fly_zones"].astype(np.float64)
        assert zones.shape == (3, 3)
        start, goal = obs[POS_DIMS].astype(np.float64), obs[GOAL_DIMS].astype(np.float64)
        for point in (start, goal):
            assert np.all(np.linalg.norm(zones[:, :2] - point, axis=1) >= clearance - 1e-5)
        np.testing.assert_array_equal(zones[:, 2], env.zone_radius)
        # On the segment: collinear with start and goal, 30%-70% of the way.
        d, c = goal - start, zones[0, :2] - start
        assert abs(d[0] * c[1] - d[1] * c[0]) < 1e-4 * np.dot(d, d)
        assert 0.3 - 1e-5 <= np.dot(c, d) / np.dot(d, d) <= 0.7 + 1e-5
    # Options last one episode; the constructor's count is the default.
    assert env.reset(seed=0)[1]["no_fly_zones"].shape == (0, 3)
    on = Nav2DEnv(num_no_fly_zones=2)
    assert on.reset(seed=0)[1]["no_fly_zones"].shape == (2, 3)
    assert on.reset(seed=0, options={"num_no_fly_zones": 0})[1]["no_fly_zones"].shape == (0, 3)


def test_a_zone_that_cannot_fit_is_dropped() -> None:
    env = Nav2DEnv()  # start and goal 2 apart: no point of the segment is 1.5 from both
    _, info = env.reset(seed=0, options={"start": (0.0, 0.0), "goal": (2.0, 0.0), "num_no_fly_zones": 1})
    assert info["no_fly_zones"].shape == (0, 3)


def test_violation_is_reported_inside_a_zone() -> None:
    env = Nav2DEnv(action_noise=0.0)
    zones = np.array([[0.05, 0.0, 1.0], [3.0, 3.0, 0.2]], dtype=np.float32)
    _, info = env.reset(seed=0, options={**FAR, "no_fly_zones": zones})
    assert info["violation"] is True
    np.testing.assert_array_equal(info["no_fly_zones"], zones)
    _, _, _, _, info = env.step(np.zeros(2, dtype=np.float32))
    assert info["violation"] is True
    _, info = env.reset(seed=0, options={"start": (-2.0, 0.0), "goal": (4.0, 4.0), "no_fly_zones": zones})
    assert info["violation"] is False


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"arena": -1.0}, "arena"), ({"spawn": 20.0}, "spawn"), ({"num_no_fly_zones": -2}, "num_no_fly_zones")],
)
def test_bad_constructor_arguments_are_named(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Nav2DEnv(**kwargs)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"goall": (1, 1)}, "goall"),
        ({"goal": (9.0, 0.0)}, "goal"),
        ({"no_fly_zones": [[0, 0]]}, "no_fly_zones"),
        ({"num_no_fly_zones": 1, "no_fly_zones": [[0, 0, 1]]}, "either"),
    ],
)
def test_bad_reset_options_are_named(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Nav2DEnv().reset(seed=0, options=options)


def test_registration_is_idempotent() -> None:
    spec = gymnasium.spec(NAV2D_ID)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warns when an id is registered twice
        register_envs()
    assert gymnasium.spec(NAV2D_ID) is spec and spec.max_episode_steps == MAX_EPISODE_STEPS


@pytest.mark.parametrize("env_id", ["NoSuchEnv-v0", "not an id"])
def test_make_env_rejects_unknown_ids(env_id: str) -> None:
    with pytest.raises(ValueError, match=f"{env_id}.*registered gymnasium id"):
        make_env(env_id)


def test_make_env_rejects_discrete_actions() -> None:
    with pytest.raises(ValueError, match="CartPole-v1 has action space Discrete.*1-D Box"):
        make_env("CartPole-v1")


@pytest.mark.parametrize(
    ("env_id", "obs_dim", "act_dim", "high"),
    [(NAV2D_ID, 6, 2, 1.0), ("Pendulum-v1", 3, 1, 2.0), ("MountainCarContinuous-v0", 2, 1, 1.0)],
)
def test_space_spec_of_box_envs_round_trips_through_json(env_id: str, obs_dim: int, act_dim: int, high: float) -> None:
    spec = space_spec(make_env(env_id), env_id)
    assert (spec.obs_dim, spec.act_dim, spec.env_id) == (obs_dim, act_dim, env_id)
    assert spec.act_low == (-high,) * act_dim and spec.act_high == (high,) * act_dim
    assert SpaceSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_space_spec_validates_itself() -> None:
    with pytest.raises(ValueError, match="act_low"):
        SpaceSpec(obs_dim=3, act_dim=2, act_low=(-1.0,), act_high=(1.0, 1.0), env_id="x")
    with pytest.raises(ValueError, match="keys"):
        SpaceSpec.from_dict({"obs_dim": 3})
