"""Holdout on fleet logs: floors held out whole, the fleet model fed its neighbours' actions, every model of a
fleet env scored on the physical state alone (known answers from a 'no change' model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.dynamics import Prediction
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.fleet_collect import collect_fleet
from worldmodel.envs.warehouse import PHYS_DIMS, WAREHOUSE_ID
from worldmodel.fleet_data import neighbour_actions, warehouse_layout
from worldmodel.fleet_dynamics import FleetEnsemble
from worldmodel.holdout import holdout_score, recent_holdout
from worldmodel.model import WorldModel

ROBOTS, FLOORS, STEPS = 8, 3, 30


@pytest.fixture(scope="module")
def logs():
    return collect_fleet(ROBOTS, FLOORS, seed=0, steps=STEPS)


class StillFleet(FleetEnsemble):
    """A fleet model predicting no change of the physical state; it keeps the neighbour actions it was given."""

    def forward(self, obs: torch.Tensor, action: torch.Tensor, neighbour_actions: torch.Tensor) -> Prediction:
        self.seen = neighbour_actions
        mean = obs[None, :, PHYS_DIMS]
        return Prediction(mean, torch.zeros_like(mean))


class StillAgent(nn.Module):
    """A per-agent model predicting no change of the whole observation."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(()))  # WorldModel finds its device by a buffer

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> Prediction:
        return Prediction(obs[None], torch.zeros_like(obs)[None])


class ZeroReward(nn.Module):
    def forward(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(1, len(obs))


def model(dynamics: nn.Module, kind: str) -> WorldModel:
    spec = space_spec(make_env(WAREHOUSE_ID), WAREHOUSE_ID)
    return WorldModel(spec, ModelConfig(dynamics=kind), TrainConfig(), dynamics, ZeroReward(), None)


def test_the_newest_floor_is_held_out_with_all_its_robots(logs) -> None:
    train, holdout = recent_holdout(logs, 0.3)
    assert set(holdout.scene) == {f"warehouse-0-{FLOORS - 1}"} and len(holdout) == ROBOTS * STEPS
    assert not set(train.scene) & set(holdout.scene) and len(train) + len(holdout) == len(logs)


def test_a_fleet_model_reads_its_neighbours_and_both_kinds_score_the_physical_state(logs) -> None:
    _, holdout = recent_holdout(logs, 0.3)
    fleet = StillFleet(warehouse_layout(), 2, members=1, hidden=8)
    scored = holdout_score(model(fleet, "fleet"), holdout)
    expected = neighbour_actions(holdout)
    assert np.abs(expected).sum() > 0  # robots did see each other: the check below means something
    np.testing.assert_array_equal(fleet.seen.numpy(), expected)
    change = (holdout.new_obs - holdout.obs)[:, PHYS_DIMS].astype(np.float64)  # (B, P)
    still = (change ** 2).mean(0) / change.var(0)  # 'no change' nMSE per physical dim
    assert scored["dims"] == [0, 1, 2, 3] and scored["dynamics_nmse"] == pytest.approx(still.mean(), rel=1e-5)
    assert scored["dynamics_nmse_per_dim"][:4] == pytest.approx(still.tolist(), rel=1e-5)
    assert scored["dynamics_nmse_per_dim"][4:] == [None] * (holdout.obs_dim - 4)
    rewards = holdout.rewards.astype(np.float64)
    assert scored["reward_nmse"] == pytest.approx((rewards ** 2).mean() / rewards.var(), rel=1e-5)
    # A per-agent model predicts every dim, but is compared with a fleet candidate on the same ones.
    agent = holdout_score(model(StillAgent(), "ensemble"), holdout)
    assert agent["dims"] == scored["dims"] and agent["score"] == pytest.approx(scored["score"], rel=1e-6)
