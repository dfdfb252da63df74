"""Reward models named by requests and by the fleet's config, through the planner deployment and the engine
(no Ray: the deployment's class in this process), and refused at the door when unknown or unfit."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.engine import PlanEngine
from serving.planner_server import PlannerServer
from serving.schema import PlanRequest
from serving.served_checks import check_request
from tests.serving.test_engine import FakeStore, Metrics, run
from tests.serving.test_engine_fallback import _served_planner
from worldmodel.config import TrainConfig
from worldmodel.data.batch import Transitions
from worldmodel.envs import SpaceSpec
from worldmodel.registry import ModelRegistry
from worldmodel.registry_store import RegistryError
from worldmodel.reward_artifact import RewardConfig, RewardMismatch
from worldmodel.reward_registry import RewardRegistry
from worldmodel.reward_training import train_reward_model

SERVICE = {"plan": {"horizon": 5, "samples": 16, "iterations": 2}}
OBS = [0.0] * 6


def synthetic_logs(sign: float, obs_dim: int = 6, episodes: int = 20, steps: int = 20) -> Transitions:
    """Random transitions whose reward is ``sign`` times the reached x position."""
    rng = np.random.default_rng(0)
    b = episodes * steps
    obs, new_obs = rng.uniform(-5, 5, (b, obs_dim)), rng.uniform(-5, 5, (b, obs_dim))
    return Transitions.build(obs, rng.uniform(-1, 1, (b, 2)), sign * new_obs[:, 0], new_obs, np.zeros(b, bool),
                             np.zeros(b, bool), np.repeat([f"e{i}" for i in range(episodes)], steps), "a",
                             np.tile(np.arange(steps), episodes))


def fit(spec: SpaceSpec, sign: float) -> Any:
    return train_reward_model(synthetic_logs(sign, spec.obs_dim), spec, RewardConfig(hidden=16, layers=1),
                              TrainConfig(epochs=5, batch_size=128))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A registry with a tiny Nav2D world model (1.0.0), rewards r1.0.0 (+x) and r1.1.0 (-x) for its spaces,
    and r2.0.0 for 8-dimensional observations."""
    uri = str(tmp_path_factory.mktemp("rewards") / "registry")
    model = _served_planner().model
    ModelRegistry(uri).register(model)
    rewards = RewardRegistry(uri)
    rewards.register(fit(model.spec, 1.0))
    rewards.register(fit(model.spec, -1.0))
    rewards.register(fit(dataclasses.replace(model.spec, obs_dim=8), 1.0))
    return uri


class _Handle:
    """A deployment handle over a ``PlannerServer`` in this process: ``handle.method.remote(...)`` awaits it."""

    class _Method:
        def __init__(self, fn: Any) -> None:
            self.fn = fn

        async def remote(self, *args: Any) -> Any:
            return await self.fn(*args)

    def __init__(self, server: PlannerServer) -> None:
        self.plan, self.info = self._Method(server.plan), self._Method(server.info)


def test_info_lists_the_reward_models_that_fit_and_the_fleets_default(registry: str) -> None:
    server = PlannerServer("1.0.0", registry, SERVICE | {"reward_model": "r1.1.0"}, 60.0)
    info = asyncio.run(server.info())
    assert info["reward_models"] == ["r1.0.0", "r1.1.0"] and info["reward_model"] == "r1.1.0"
    plain = asyncio.run(PlannerServer("1.0.0", registry, SERVICE, 60.0).info())
    assert plain["reward_model"] is None and plain["reward_models"] == ["r1.0.0", "r1.1.0"]


def test_a_fleets_reward_model_that_is_unknown_or_unfit_is_refused_at_the_start(registry: str,
                                                                               tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"unknown reward model 'r9.0.0'.*registered: r1.0.0, r1.1.0, r2.0.0"):
        PlannerServer("1.0.0", registry, SERVICE | {"reward_model": "r9.0.0"}, 60.0)
    with pytest.raises(RewardMismatch, match=r"reward model r2.0.0 fits Nav2D-v0 with \(S, A\) = \(8, 2\); "
                                              r"model 1.0.0 has Nav2D-v0 with \(6, 2\)"):
        PlannerServer("1.0.0", registry, SERVICE | {"reward_model": "r2.0.0"}, 60.0)
    with pytest.raises(ValueError, match="a reward version is 'r' and a semantic version"):
        PlannerServer("1.0.0", registry, SERVICE | {"reward_model": "1.0.0"}, 60.0)


def test_answers_say_which_reward_model_planned_the_requests_else_the_fleets(registry: str) -> None:
    server = PlannerServer("1.0.0", registry, SERVICE | {"reward_model": "r1.0.0"}, 60.0)
    engine = PlanEngine(_Handle(server), FakeStore(), None, None, Metrics(), None)
    named, default, goal = run(engine, PlanRequest(agent_id="a", observation=OBS, reward_model="r1.1.0"),
                               PlanRequest(agent_id="b", observation=OBS),
                               PlanRequest(agent_id="c", observation=OBS, objective={"name": "goal"}))
    assert (named.reward_model, default.reward_model, goal.reward_model) == ("r1.1.0", "r1.0.0", None)
    assert named.to_dict()["reward_model"] == "r1.1.0" and sorted(server.rewards.loaded) == ["r1.0.0", "r1.1.0"]
    own = PlannerServer("1.0.0", registry, SERVICE, 60.0)
    batch = asyncio.run(own.plan(np.zeros((1, 6), np.float32), None, ["learned"], {}, None))
    assert batch.reward_models == [None]  # no default: the world model's own reward


def test_an_unknown_or_unfit_reward_model_is_refused_at_the_door(registry: str) -> None:
    spec = asyncio.run(PlannerServer("1.0.0", registry, SERVICE, 60.0).info())
    assert check_request(PlanRequest(agent_id="a", observation=OBS, reward_model="r1.1.0"), spec) is None
    for name in ("r9.0.0", "r2.0.0"):  # unknown, and registered for other spaces
        problem = check_request(PlanRequest(agent_id="a", observation=OBS, reward_model=name), spec, "requests.0.")
        assert problem == (f"requests.0.reward_model: {name!r} is not a registered reward model fitting model "
                           f"1.0.0 (Nav2D-v0)'s spaces; those that fit: r1.0.0, r1.1.0")
    with pytest.raises(ValueError, match="reward_model"):
        PlanRequest(agent_id="a", observation=OBS, reward_model="1.2.0")  # a world-model version


def test_without_a_registry_no_reward_model_can_be_named(tmp_path: Path) -> None:
    from worldmodel.artifact import save_model

    model_dir = save_model(_served_planner().model, tmp_path / "model")
    server = PlannerServer(str(model_dir), None, SERVICE, 60.0)
    assert asyncio.run(server.info())["reward_models"] == []
    with pytest.raises(RegistryError, match="without a registry"):
        asyncio.run(server.plan(np.zeros((1, 6), np.float32), None, ["learned"], {}, None, None, None, None,
                                ["r1.0.0"]))


def test_the_served_openapi_lists_the_reward_models_a_request_may_name() -> None:
    from fastapi import FastAPI

    from serving.app import api
    from serving.served_checks import served_openapi

    def field(schema: dict[str, Any]) -> Any:
        return schema["components"]["schemas"]["PlanRequest"]["properties"].get("reward_model")

    base = FastAPI.openapi(api)
    named = field(served_openapi(base, 6, 2, reward_models=["r1.0.0", "r1.1.0"]))
    assert {"type": "string", "enum": ["r1.0.0", "r1.1.0"]} in named["anyOf"]
    assert field(served_openapi(base, 6, 2, reward_models=[])) is None  # none registered: not offered
    assert field(served_openapi(base, 6, 2)) is None and "pattern" in field(base)["anyOf"][0]
