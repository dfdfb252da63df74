"""Where imagined episodes start: the logs, plus (per ``RESET_SHARE``) the real env's first observations.

Toy checks against gymnasium's own resets first, then one tiny Pendulum training end to end.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from learners.policy_env import reset_observations
from learners.policy_training import RESET_SEEDS, read_starts, train_policy, with_reset_starts
from learners.settings import POLICY_PRESETS, PolicySettings
from planners.policy_artifact import policy_info
from tests.ray_fixtures import ray_local  # noqa: F401
from worldmodel.artifact import save_model
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.data import write_transitions
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.collect import collect
from worldmodel.training import train_world_model


def test_reset_observations_are_the_real_envs_first_observations() -> None:
    obs = reset_observations("Pendulum-v1", 4, seed=7)
    assert obs.shape == (4, 3) and obs.dtype == np.float32
    env = gym.make("Pendulum-v1")
    expected = np.stack([env.reset(seed=7 + i)[0] for i in range(4)])
    np.testing.assert_array_equal(obs, expected)
    # Pendulum's reset distribution: any angle, |angular velocity| <= 1.
    np.testing.assert_allclose(obs[:, 0] ** 2 + obs[:, 1] ** 2, 1.0, rtol=1e-5)
    assert (np.abs(obs[:, 2]) <= 1).all()


def test_reset_starts_make_up_the_share_after_the_logged_rows() -> None:
    logged = np.zeros((6, 3), np.float32)
    assert with_reset_starts(logged, "Pendulum-v1", 0.0, seed=3) is logged
    starts = with_reset_starts(logged, "Pendulum-v1", 0.75, seed=3)
    assert starts.shape == (24, 3) and starts.dtype == np.float32
    np.testing.assert_array_equal(starts[:6], logged)
    # Seeded away from the evaluations' seeds (seed + 2 onwards), so no start is one the policy is scored on.
    np.testing.assert_array_equal(starts[6:], reset_observations("Pendulum-v1", 18, 3 + RESET_SEEDS))
    for share in (1.0, -0.1):
        with pytest.raises(ValueError, match=f"share of reset starts must be in \\[0, 1\\), got {share}"):
            with_reset_starts(logged, "Pendulum-v1", share, seed=3)


def test_only_pendulum_starts_from_resets() -> None:
    # Nav2D draws its own goals and zones per imagined episode; its starts stay the logged ones.
    shares = {env: preset.reset_share for env, preset in POLICY_PRESETS.items()}
    assert shares == {"Nav2D-v0": 0.0, "Pendulum-v1": 0.8}


def test_a_pendulum_policy_trains_from_logged_and_reset_starts(ray_local, tmp_path) -> None:  # noqa: F811
    data = collect("Pendulum-v1", episodes=3, seed=0)
    write_transitions(str(tmp_path / "logs"), data, "Pendulum-v1")
    model = train_world_model(data, space_spec(make_env("Pendulum-v1"), "Pendulum-v1"),
                              ModelConfig(ensemble_size=2, hidden=16, layers=1, reward_hidden=16, reward_layers=1),
                              TrainConfig(epochs=2, patience=2, seed=0))
    save_model(model, tmp_path / "model")
    tiny = PolicySettings(iterations=1, num_envs=16, steps_per_env=8, horizon=10, minibatch=64, epochs=1,
                          eval_episodes=4, hidden=16, zones=(0, 0), reset_share=0.8)
    result = train_policy(tmp_path / "model", str(tmp_path / "logs"), tiny, progress=lambda _: None)
    logged = len(read_starts(str(tmp_path / "logs"), "Pendulum-v1", 0))
    share = tiny.reset_share
    assert result.logged_starts == logged and result.reset_starts == round(logged * share / (1 - share))
    assert result.real.episodes == result.imagined.episodes == 4 and np.isfinite(result.real.mean_return)
    assert policy_info(tmp_path / "model")["summary"]["reset_starts"] == result.reset_starts
