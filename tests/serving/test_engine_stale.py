"""Records left by another model or horizon (a redeploy on the same state shards), and new episodes,
give the planner nothing to start from: requests are planned cold, never refused or failed."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from actors.records import PlanAnswer
from planners import PlanConfig
from planners.service import FleetPlanner, PlanBatch, ServiceConfig
from serving.engine import PlanEngine
from serving.schema import PlanRequest
from tests.planners.test_recurrent import _model as gru_model
from tests.serving.test_engine import N_OBS, FakeLogger, FakePlanner, FakeStore, Metrics, record, run
from tests.serving.test_engine_fallback import _Served, _served_planner


def _stale(agent: str, horizon: int = 30, act_dim: int = 2) -> Any:
    """A record in the middle of an episode, left by a server that planned ``horizon`` steps."""
    return dataclasses.replace(record(agent), t=3, obs=np.zeros(N_OBS, np.float32),
                               action=np.zeros(act_dim, np.float32), predicted=np.zeros(N_OBS, np.float32),
                               warm_start=np.zeros((horizon, act_dim), np.float32))


def test_records_of_another_horizon_are_planned_cold_and_rewritten() -> None:
    store = FakeStore()
    store.records.update({a: _stale(a) for a in ("a0", "a1")})
    engine = PlanEngine(_Served(_served_planner()), store, FakeLogger(), None, Metrics(), None)
    requests = [PlanRequest(agent_id=a, observation=[0.1] * N_OBS, reward=1.0, t=4, prev_action=[0.1, 0.1])
                for a in ("a0", "a1")]
    assert all(isinstance(a, PlanAnswer) for a in run(engine, *requests))
    assert [store.records[a].warm_start.shape for a in ("a0", "a1")] == [(5, 2)] * 2  # the served horizon now
    assert all(isinstance(a, PlanAnswer) and not a.replayed for a in run(engine, *(
        r.model_copy(update={"t": 5, "request_id": "r5"}) for r in requests)))


def test_a_prev_action_of_the_served_size_is_not_refused_for_an_old_records_size() -> None:
    store, logger = FakeStore(), FakeLogger()
    store.records["a0"] = _stale("a0", horizon=4, act_dim=3)  # an older model had 3 action values
    engine = PlanEngine(FakePlanner("2.0.0"), store, logger, None, Metrics(), None)
    answer, = run(engine, PlanRequest(agent_id="a0", observation=[0.1] * N_OBS, reward=1.0, t=4,
                                      prev_action=[0.1, 0.1]))
    assert isinstance(answer, PlanAnswer)
    assert logger.batches == [] and engine.stats()["unlogged"] == {"shape": 1}
    assert store.records["a0"].eps_id != "a0-e0"  # a new episode: nothing spans the two models


def test_a_served_planner_ignores_warm_starts_and_hidden_states_of_another_shape() -> None:
    service = FleetPlanner(gru_model(), ServiceConfig(plan=PlanConfig(horizon=5, samples=8, iterations=1)))
    obs = np.zeros((2, 6), np.float32)
    out = service.plan(obs, warm_start=np.ones((2, 30, 2), np.float32), hidden=np.ones((2, 99), np.float32))
    assert out.warm_start.shape == (2, 5, 2) and np.all(np.isfinite(out.actions))
    fresh = service.model.dynamics.initial_state(2)
    expected, _ = service.model.dynamics.step(fresh, torch.as_tensor(obs), torch.as_tensor(out.actions))
    np.testing.assert_allclose(out.hidden, expected.detach().numpy(), rtol=1e-5, atol=1e-6)  # from a fresh state


class _Recording(FakePlanner):
    """Keeps the warm starts it was asked to start from."""

    def __init__(self) -> None:
        super().__init__("1.0.0")
        self.warm_starts: list[np.ndarray | None] = []

    def _plan(self, obs: np.ndarray, warm_start: np.ndarray | None = None, *rest: Any) -> PlanBatch:
        self.warm_starts.append(warm_start)
        return super()._plan(obs)


def test_a_new_episode_is_not_warm_started_from_the_last_one() -> None:
    planner = _Recording()
    engine = PlanEngine(planner, FakeStore(), None, None, Metrics(), None)
    for t in (0, 1, 0):  # the agent restarted without ending its episode
        run(engine, PlanRequest(agent_id="a0", observation=[0.1] * N_OBS, t=t, reward=None if t == 0 else 1.0,
                                prev_action=None if t == 0 else [0.5, 0.5]))
    first, second, restart = planner.warm_starts
    assert first is None and np.all(np.isfinite(second)) and restart is None
