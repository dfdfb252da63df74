"""Ensemble workers (plan, score, switch version under load), the simulated fleet, the telemetry logger."""

from __future__ import annotations

import asyncio
import numpy as np
import pytest
import ray

from actors.ensemble import start_ensemble_worker
from actors.fleet import simulate_fleet
from actors.telemetry import TelemetryLogger
from planners import PlanConfig
from planners.service import ServiceConfig
from tests.ray_fixtures import ray_local  # noqa: F401
from tests.worldmodel.conftest import TINY_MODEL, TINY_TRAIN
from worldmodel.config import TrainConfig
from worldmodel.data import Transitions, read_transitions
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.collect import collect
from worldmodel.registry import ModelRegistry
from worldmodel.training import train_world_model

SMALL = ServiceConfig(plan=PlanConfig(horizon=6, samples=16, iterations=2))


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> ModelRegistry:
    data = collect("Nav2D-v0", episodes=8, seed=0)
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    reg = ModelRegistry(str(tmp_path_factory.mktemp("reg") / "registry"))
    reg.promote(reg.register(train_world_model(data, spec, TINY_MODEL, TINY_TRAIN)).version, "production")
    reg.register(train_world_model(data, spec, TINY_MODEL, TrainConfig(epochs=3, seed=1)))
    return reg


def test_worker_plans_scores_and_switches_without_dropping_calls(ray_local, registry) -> None:  # noqa: F811
    worker = start_ensemble_worker("production", registry.uri, SMALL)
    info = ray.get(worker.info.remote())
    assert info["model_version"] == "1.0.0" and info["device"] == "cpu"
    obs = np.random.default_rng(0).uniform(-1, 1, (12, 6)).astype(np.float32)
    out = ray.get(worker.plan.remote(obs))
    assert out.actions.shape == (12, 2) and out.warm_start.shape == (12, 6, 2)
    assert np.all(np.abs(out.actions) <= 1) and out.reasons() == [None] * 12
    scored = ray.get(worker.score.remote(obs, out.actions, out.trajectory[:, 1]))
    assert scored["errors"].shape == (12,) and scored["mean_error"] < 1e-4  # its own prediction: no error

    in_flight = [worker.plan.remote(obs) for _ in range(20)]
    switched = worker.switch.remote("1.1.0")
    during = [worker.plan.remote(obs) for _ in range(5)]
    results = ray.get(in_flight + during)  # none dropped while the new version loads
    assert ray.get(switched) == "1.1.0"
    assert {r.model_version for r in results} <= {"1.0.0", "1.1.0"}
    assert ray.get(worker.plan.remote(obs)).model_version == "1.1.0"
    ray.kill(worker)


def test_simulated_fleet_logs_whole_episodes(ray_local, tmp_path, registry) -> None:  # noqa: F811
    logs = str(tmp_path / "logs")
    report = simulate_fleet("Nav2D-v0", logs, simulators=2, episodes=3, seed=7)
    assert report["episodes"] == 6 and report["files"] >= 2
    data = read_transitions(logs)
    assert len(data) == report["transitions"]
    assert len(set(data.agent_id.tolist())) == 2 and len(set(data.eps_id.tolist())) == 6

    worker = start_ensemble_worker("production", registry.uri, SMALL)
    planned = simulate_fleet("Nav2D-v0", str(tmp_path / "planned"), simulators=1, episodes=1, worker=worker)
    assert planned["transitions"] > 0
    ray.kill(worker)


def test_telemetry_logger_drops_duplicates_and_writes_whole_files(tmp_path) -> None:
    logger = TelemetryLogger(str(tmp_path / "tele"), env_id="Nav2D-v0", flush_rows=4, flush_s=60)

    def steps(*t: int) -> Transitions:
        b = len(t)
        return Transitions.build(obs=np.zeros((b, 6)), actions=np.zeros((b, 2)), rewards=np.full(b, -1.0),
                                 new_obs=np.ones((b, 6)), terminateds=np.zeros(b, bool), truncateds=np.zeros(b, bool),
                                 eps_id=["e-1"] * b, agent_id="a-1", t=np.array(t), model_version="1.0.0")

    assert asyncio.run(logger.log(steps(0, 1, 1))) == 2
    assert asyncio.run(logger.log(steps(1, 2, 3))) == 2  # 4 buffered: flushed
    stats = logger.stats()
    assert (stats.written, stats.buffered, stats.duplicates, stats.files) == (4, 0, 2, 1)
    data = read_transitions(str(tmp_path / "tele"))
    assert sorted(data.t.tolist()) == [0, 1, 2, 3]
