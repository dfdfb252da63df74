"""collect: whole episodes, real transitions, exact counts, reproducible by seed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from worldmodel.data.batch import Transitions
from worldmodel.envs.collect import collect
from worldmodel.envs.nav2d import GOAL_DIMS, POS_DIMS


def _episodes(tr: Transitions) -> dict[str, np.ndarray]:
    """Row indices of each episode, in row order."""
    return {e: np.flatnonzero(tr.eps_id == e) for e in dict.fromkeys(tr.eps_id)}


def _check_episodes(tr: Transitions, count: int) -> None:
    episodes = _episodes(tr)
    assert len(episodes) == count
    for rows in episodes.values():
        assert np.all(np.diff(rows) == 1), "an episode's rows are contiguous"
        np.testing.assert_array_equal(tr.t[rows], np.arange(len(rows)))
        np.testing.assert_array_equal(tr.new_obs[rows[:-1]], tr.obs[rows[1:]])
        ended = tr.terminateds[rows] | tr.truncateds[rows]
        assert ended[-1] and not ended[:-1].any()


def _same(a: Transitions, b: Transitions) -> bool:
    return all(
        np.array_equal(getattr(a, f.name), getattr(b, f.name))
        for f in dataclasses.fields(Transitions)
        if f.name != "timestamp"
    )


@pytest.mark.parametrize("num_envs", [1, 3, 8])
def test_collect_returns_exactly_the_episodes_asked(num_envs: int) -> None:
    tr = collect("Nav2D-v0", episodes=5, seed=1, num_envs=num_envs, env_kwargs={"max_episode_steps": 30})
    _check_episodes(tr, 5)
    assert set(tr.eps_id) == {f"agent-0000-1-{i}" for i in range(5)}
    assert np.all(tr.model_version == "") and np.all(tr.agent_id == "agent-0000")
    assert tr.obs.dtype == np.float32 and tr.obs_dim == 6 and tr.act_dim == 2
    assert np.all(np.abs(tr.actions) <= 1.0)


def test_final_observation_is_real_not_the_reset_one() -> None:
    # goal_radius 1.9 < 2.0, the least start-goal distance: a terminal obs is within 1.9 of its
    # goal, a reset obs never is. Short time limits mix truncations in.
    kwargs = {"goal_radius": 1.9, "max_episode_steps": 100}
    tr = collect("Nav2D-v0", episodes=60, seed=2, num_envs=8, env_kwargs=kwargs)
    _check_episodes(tr, 60)
    distance = np.linalg.norm(tr.new_obs[:, POS_DIMS] - tr.new_obs[:, GOAL_DIMS], axis=1)
    assert tr.terminateds.any() and tr.truncateds.any()
    np.testing.assert_array_equal(tr.terminateds, distance <= 1.9)
    # The goal never changes inside an episode, new_obs of the last step included.
    for rows in _episodes(tr).values():
        np.testing.assert_array_equal(tr.new_obs[rows, GOAL_DIMS], np.broadcast_to(tr.obs[rows[0], GOAL_DIMS], (len(rows), 2)))


def test_same_seed_same_data_other_seed_other_data() -> None:
    kwargs = {"episodes": 4, "num_envs": 2, "env_kwargs": {"max_episode_steps": 25}}
    a, b = collect("Nav2D-v0", seed=5, **kwargs), collect("Nav2D-v0", seed=5, **kwargs)
    assert _same(a, b)
    c = collect("Nav2D-v0", seed=6, **kwargs)
    assert not np.array_equal(a.obs[:10], c.obs[:10])
    assert not set(a.eps_id) & set(c.eps_id)
    d = collect("Nav2D-v0", seed=5, agent_id="agent-0001", **kwargs)
    assert not set(a.eps_id) & set(d.eps_id)


@pytest.mark.parametrize(("env_id", "obs_dim", "high"), [("Pendulum-v1", 3, 2.0), ("MountainCarContinuous-v0", 2, 1.0)])
def test_other_box_envs_collect(env_id: str, obs_dim: int, high: float) -> None:
    tr = collect(env_id, episodes=3, seed=0, num_envs=2, env_kwargs={"max_episode_steps": 20})
    _check_episodes(tr, 3)
    assert tr.obs_dim == obs_dim and tr.act_dim == 1
    assert np.all(np.abs(tr.actions) <= high) and tr.actions.std() > 0.1 * high


def test_progress_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    collect("Nav2D-v0", episodes=2, num_envs=2, progress=True, env_kwargs={"max_episode_steps": 5})
    out, err = capsys.readouterr()
    assert out == "" and "collect Nav2D-v0" in err


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"policy": "greedy"}, "greedy.*random"),
        ({"episodes": 0}, "episodes"),
        ({"seed": -1}, "seed"),
        ({"num_envs": 0}, "num_envs"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        collect("Nav2D-v0", **{"episodes": 1, **kwargs})


def test_unknown_env_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="NoSuchEnv-v0"):
        collect("NoSuchEnv-v0", episodes=1)


def test_held_random_play_keeps_actions_a_few_steps_and_reaches_speed() -> None:
    from worldmodel.envs.collect import HELD_STEPS
    from worldmodel.envs.nav2d import VEL_DIMS

    held, fresh = (collect("Nav2D-v0", 16, seed=2, policy=p, num_envs=4) for p in ("held", "random"))
    _check_episodes(held, 16)
    same = [np.mean(np.all(tr.actions[rows[1:]] == tr.actions[rows[:-1]], axis=1))
            for tr in (held, fresh) for rows in [np.concatenate([r for r in _episodes(tr).values()])]]
    assert abs(same[0] - (1 - 1 / HELD_STEPS)) < 0.05 and same[1] == 0.0  # kept with probability 1 - 1/HELD_STEPS
    speed = [np.abs(tr.new_obs[:, VEL_DIMS]).mean() for tr in (held, fresh)]
    assert speed[0] > 1.5 * speed[1]
    assert _same(held, collect("Nav2D-v0", 16, seed=2, policy="held", num_envs=4))  # reproducible by seed
