"""Holdout split and score: the newest episodes held out whole; known scores on a toy linear system."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.data.batch import Transitions
from worldmodel.dynamics import Prediction
from worldmodel.envs import SpaceSpec
from worldmodel.holdout import holdout_score, recent_holdout
from worldmodel.model import WorldModel

EPISODES, STEPS = 10, 20
# The episodes end in this order (oldest first): the split must follow time, not ids.
END_ORDER = [3, 0, 7, 1, 9, 2, 8, 4, 6, 5]


def toy_data() -> Transitions:
    """s' = s + 0.5 a on the first two dims, a constant third dim; reward -|s'|^2."""
    rng = np.random.default_rng(0)
    b = EPISODES * STEPS
    obs = np.c_[rng.normal(size=(b, 2)), np.full(b, 3.0)].astype(np.float32)
    actions = rng.normal(size=(b, 2)).astype(np.float32)
    new_obs = obs.copy()
    new_obs[:, :2] += 0.5 * actions
    episode = np.repeat(np.arange(EPISODES), STEPS)
    rank = np.argsort(END_ORDER)[episode]  # position of each row's episode in END_ORDER
    start = np.datetime64("2024-01-01T00:00:00", "us")
    timestamp = start + (rank * 1000 + np.tile(np.arange(STEPS), EPISODES)).astype("timedelta64[s]")
    return Transitions.build(obs, actions, -(new_obs[:, :2] ** 2).sum(1), new_obs, np.zeros(b, bool),
                             np.zeros(b, bool), [f"ep-{e}" for e in episode], "agent-0",
                             np.tile(np.arange(STEPS), EPISODES), timestamp=timestamp)


class LinearDynamics(nn.Module):
    """A one-member 'ensemble' predicting s + gain * [a, 0]."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.register_buffer("gain", torch.tensor(gain))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> Prediction:
        mean = obs + self.gain * torch.cat([action, torch.zeros_like(obs[:, 2:])], -1)
        return Prediction(mean[None], torch.zeros_like(mean)[None])


class Reward(nn.Module):
    """The true reward, or a constant."""

    def __init__(self, constant: float | None = None) -> None:
        super().__init__()
        self.constant = constant

    def forward(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> torch.Tensor:
        true = -(new_obs[:, :2] ** 2).sum(-1)
        return (true if self.constant is None else torch.full_like(true, self.constant))[None]


def world_model(gain: float, reward_constant: float | None = None) -> WorldModel:
    spec = SpaceSpec(3, 2, (-1.0, -1.0), (1.0, 1.0), "Toy-v0")
    return WorldModel(spec, ModelConfig(), TrainConfig(), LinearDynamics(gain), Reward(reward_constant), None)


def test_recent_holdout_takes_the_newest_whole_episodes() -> None:
    data = toy_data()
    train, holdout = recent_holdout(data, 0.3)
    assert set(holdout.eps_id) == {f"ep-{e}" for e in END_ORDER[-3:]}
    assert set(train.eps_id) == {f"ep-{e}" for e in END_ORDER[:-3]}
    assert len(train) + len(holdout) == len(data) and len(holdout) == 3 * STEPS
    assert train.timestamp.max() < holdout.timestamp.min()
    # Tiny fractions still hold one episode out; huge ones still leave one to train on.
    assert set(recent_holdout(data, 0.01)[1].eps_id) == {f"ep-{END_ORDER[-1]}"}
    assert set(recent_holdout(data, 0.99)[0].eps_id) == {f"ep-{END_ORDER[0]}"}


def test_recent_holdout_rejects_bad_arguments() -> None:
    data = toy_data()
    with pytest.raises(ValueError, match="fraction must be in"):
        recent_holdout(data, 1.0)
    with pytest.raises(ValueError, match="at least 2 episodes"):
        recent_holdout(data.select(data.eps_id == "ep-0"), 0.5)


def test_true_model_scores_zero_and_no_change_model_scores_about_one() -> None:
    data = toy_data()
    perfect = holdout_score(world_model(gain=0.5), data)
    assert perfect["score"] == pytest.approx(0.0, abs=1e-6)
    assert perfect["dynamics_nmse_per_dim"][2] is None  # the constant dim is left out
    assert perfect["rows"] == len(data) and perfect["episodes"] == EPISODES

    mean_reward = float(data.rewards.astype(np.float64).mean())
    still = holdout_score(world_model(gain=0.0, reward_constant=mean_reward), data)
    change = (data.new_obs - data.obs)[:, :2].astype(np.float64)
    expected = ((change ** 2).mean(0) / change.var(0)).mean()  # E[d^2] / Var(d): 1 for a zero-mean change
    assert still["dynamics_nmse"] == pytest.approx(expected, rel=1e-5)
    assert still["dynamics_nmse"] == pytest.approx(1.0, abs=0.1)
    assert still["reward_nmse"] == pytest.approx(1.0, rel=1e-5)
    assert still["score"] == pytest.approx(still["dynamics_nmse"] + still["reward_nmse"])

    half = holdout_score(world_model(gain=0.25), data)  # half the true change: error (d/2)^2
    assert half["dynamics_nmse"] == pytest.approx(expected / 4, rel=1e-4)


def test_score_rejects_mismatched_sizes() -> None:
    data = toy_data()
    narrow = Transitions.build(data.obs[:, :2], data.actions, data.rewards, data.new_obs[:, :2],
                               data.terminateds, data.truncateds, data.eps_id, data.agent_id, data.t)
    with pytest.raises(ValueError, match="obs/action sizes"):
        holdout_score(world_model(gain=0.5), narrow)
