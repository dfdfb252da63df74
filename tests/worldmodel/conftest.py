from __future__ import annotations

import pytest

from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.data.batch import Transitions
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.collect import collect
from worldmodel.model import WorldModel
from worldmodel.training import train_world_model

TINY_MODEL = ModelConfig(ensemble_size=3, hidden=32, layers=2, reward_hidden=32, reward_layers=2)
TINY_TRAIN = TrainConfig(epochs=5, batch_size=256, patience=5)


@pytest.fixture(scope="session")
def nav_data() -> Transitions:
    return collect("Nav2D-v0", episodes=12, seed=0)


@pytest.fixture(scope="session")
def tiny_model(nav_data: Transitions) -> WorldModel:
    """A quickly trained (not accurate) Nav2D world model for round-trip and CLI tests."""
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    return train_world_model(nav_data, spec, TINY_MODEL, TINY_TRAIN)
