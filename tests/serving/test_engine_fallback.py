"""The served answer says why the fallback acted: FleetPlanner's reason through the engine to the answer
and the metrics (the planners' own reasons are tested in tests/planners/test_fallback.py)."""

from __future__ import annotations

import time

import torch

from planners import PlanConfig
from planners.service import FleetPlanner, ServiceConfig
from serving.config import AppConfig
from serving.engine import PlanEngine
from serving.schema import PlanRequest
from tests.serving.test_engine import FakeStore, Metrics, _Remote, run
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.envs import NAV2D_ID, make_env, space_spec
from worldmodel.model import WorldModel, build_dynamics, build_reward


def _served_planner() -> FleetPlanner:
    """A tiny untrained Nav2D model's FleetPlanner, warmed up for batches of 2."""
    torch.manual_seed(0)
    spec = space_spec(make_env(NAV2D_ID), NAV2D_ID)
    small = ModelConfig(ensemble_size=2, hidden=16, layers=2, reward_hidden=16, reward_layers=2)
    model = WorldModel(spec, small, TrainConfig(), build_dynamics(spec, small).eval(), build_reward(spec, small).eval(),
                       None, version="1.0.0")
    service = FleetPlanner(model, ServiceConfig(plan=PlanConfig(horizon=5, samples=16, iterations=2)))
    service.warmup(sizes=(2,))
    return service


class _Served:
    """A planner deployment handle over a FleetPlanner in this process, called with ``PlannerServer.plan``'s
    arguments (the last, the hidden states' versions, is the ensemble worker's to check: left out here)."""

    def __init__(self, service: FleetPlanner) -> None:
        self.plan, self.score = _Remote(lambda *args: service.plan(*args[:9])), _Remote(service.score)


def test_an_engine_past_its_deadline_answers_the_fallback_at_once_saying_why() -> None:
    engine = PlanEngine(_Served(_served_planner()), FakeStore(), None, None, Metrics(), 1e-3)
    requests = [PlanRequest(agent_id=f"a{i}", observation=[0.1] * 6) for i in range(2)]
    start = time.perf_counter()
    answers = run(engine, *requests)
    assert time.perf_counter() - start < 2.0
    assert [(a.fallback, a.fallback_reason) for a in answers] == [(True, "deadline")] * 2
    # No policy in this model: the zero action acted, and the answer and the metric say so.
    assert [(a.decision, a.fallback_action_by) for a in answers] == [("fallback", "zero")] * 2
    tags = [t for _, t in engine.metrics.fallbacks.calls]
    assert tags == [{"model_version": "1.0.0", "reason": "deadline", "by": "zero"}]
    relaxed = PlanEngine(_Served(_served_planner()), FakeStore(), None, None, Metrics(), 10_000.0)
    assert [a.fallback_reason for a in run(relaxed, *requests)] == [None, None]


def test_the_default_deadline_is_the_control_period_of_a_10_hz_fleet() -> None:
    assert AppConfig(model="m").default_deadline_ms == 100.0
