"""Why each action was taken, without Ray: the answer's decision fields from a planner batch, the agents'
constraints as planner params, violations observed at the next request, the decisions kept for
``/v1/explain`` and the explain path of the engine (fake planner, real record store)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import numpy as np
import pytest
import torch

from actors.records import AgentObjective, PlanAnswer, Rejected
from planners.base import Decision
from planners.constraints import Constraint
from planners import PlanConfig
from planners.objectives import ACTION_HIGH, ACTION_LOW, BOX, MAX_SPEED, ZONES
from planners.policy import PolicyNet
from planners.service import FleetPlanner, ServiceConfig
from serving import rows
from serving.engine import PlanEngine
from serving.explain import DecisionStore, ExplainRequest, Served
from serving.front import encode
from serving.planner_server import PlannerServer
from serving.schema import Objective, PlanRequest
from tests.serving.test_engine import N_ACT, N_OBS, FakePlanner, FakeStore, Metrics, _Remote, record, run
from tests.serving.test_engine_fallback import _Served as _ServedPlans
from tests.serving.test_engine_fallback import _served_planner
from worldmodel.artifact import save_model

INF = float("inf")


def _answer(plan_id: str) -> PlanAnswer:
    return PlanAnswer(action=[0.0, 0.0], model_version="1", plan_id=plan_id, disagreement=0.0, fallback=False,
                      fallback_reason=None)


def _served(agent: str, plan_id: str, at: float | None = None) -> Served:
    return Served(agent, time.monotonic() if at is None else at, np.zeros(N_OBS, np.float32), None, None,
                  _answer(plan_id))


def test_the_store_keeps_each_agents_last_decisions_for_the_ttl() -> None:
    store = DecisionStore(ttl_s=600, per_agent=3, max_total=5)
    store.put([_served("a", f"a{i}") for i in range(4)])  # a0 pushed out by the agent's bound
    assert store.get("a", "a0") is None and store.get("a", "a3").answer.plan_id == "a3"
    assert store.get("b", "a3") is None  # another agent's decision is not found through this one
    store.put([_served("b", f"b{i}") for i in range(3)])  # 6 in all: the oldest (a1) goes
    assert len(store) == 5 and store.get("a", "a1") is None and store.get("a", "a2") is not None
    store.forget(["b"])
    assert store.get("b", "b2") is None and len(store) == 2
    aged = DecisionStore(ttl_s=600)
    aged.put([_served("c", "c0", at=time.monotonic() - 601), _served("c", "c1")])  # the first is past the TTL
    assert aged.get("c", "c0") is None and aged.get("c", "c1") is not None and len(aged) == 1


def _batch(**fields: Any) -> Any:
    """A ``PlanBatch`` of 4 agents, one of each decision, from the fake planner, with ``fields`` set."""
    planner = FakePlanner("1.0.0")
    batch = planner._plan(np.zeros((4, N_OBS), np.float32))
    return dataclasses.replace(batch, **fields)


def test_answers_say_why_each_action_was_taken() -> None:
    batch = _batch(decision=np.array([Decision.PLANNED, Decision.FALLBACK, Decision.SHIELDED, Decision.POLICY],
                                     np.int8),
                   fallback_reason=np.array([0, 1, 1, 0], np.int8),
                   shield=np.array([0, 0, Constraint.NO_FLY_ZONE, 0], np.int8),
                   margin=np.array([INF, 0.5, 0.2, -0.1], np.float32), fallback_source="policy")
    requests = [PlanRequest(agent_id=f"a{i}", observation=[0.0] * N_OBS) for i in range(4)]
    got = [(a.decision, a.fallback_reason, a.fallback_action_by, a.shielded_constraint, a.margin)
           for a in rows.answers(requests, batch, None)]
    assert got == [("planned", None, None, None, None), ("fallback", "deadline", "policy", None, 0.5),
                   ("shielded", "deadline", "policy", "no_fly_zone", pytest.approx(0.2)),
                   ("policy", None, None, None, pytest.approx(-0.1))]


def test_constraints_become_planner_params_padded_to_cost_nothing() -> None:
    goals = [rows.agent_objective(Objective(name="goal", no_fly_zones=[(1, 2, 0.5), (3, 4, 1.0)], max_speed=2.0)),
             None,
             rows.agent_objective(Objective(bounds=((-1, -2), (3, 4)), action_bounds=([-0.5, 0.0], [0.5, 1.0])))]
    params = rows.constraints(goals)
    assert set(params) == {ZONES, BOX, MAX_SPEED, ACTION_LOW, ACTION_HIGH}
    assert params[ZONES].shape == (3, 2, 3) and params[ZONES][1:].sum() == 0  # radius 0 pads
    assert params[BOX][2].tolist() == [[-1, -2], [3, 4]] and np.isinf(params[BOX][:2]).all()
    assert params[MAX_SPEED].tolist() == [2.0, INF, INF]
    assert params[ACTION_LOW].tolist() == [[-INF, -INF]] * 2 + [[-0.5, 0.0]]
    assert params[ACTION_HIGH][2].tolist() == [0.5, 1.0]
    assert rows.constraints([None, goals[0]]).keys() == {ZONES, MAX_SPEED}  # only what some agent has
    assert rows.constraints([None, None]) == {}


def test_observed_violations_check_the_new_observation_against_the_last_requests_constraints() -> None:
    zone = AgentObjective(name="goal", no_fly_zones=((0.0, 0.0, 1.0),))
    box = AgentObjective(bounds=((-1.0, -1.0), (1.0, 1.0)))
    speed = AgentObjective(max_speed=1.0)
    records = [dataclasses.replace(_record(f"a{i}"), objective=o) for i, o in enumerate((zone, box, speed, zone))]
    obs = np.array([[0.5, 0, 0, 0, 5, 5],  # inside the zone
                    [2.0, 0, 0, 0, 5, 5],  # outside the box
                    [0.0, 0, 3, 0, 5, 5],  # 3 > 1
                    [3.0, 0, 0, 0, 5, 5]], np.float32)  # clear of the zone
    steps = [rows.Continuation(True, None)] * 4
    assert rows.observed_violations(rows.violation_flags(records, steps, obs)) == \
        {"no_fly_zone": 1, "state_box": 1, "speed": 1}
    new_episode = [rows.Continuation(False, None)] * 4  # no longer the episode the constraints were for
    assert rows.observed_violations(rows.violation_flags(records, new_episode, obs)) == {}


def _record(agent: str) -> Any:
    return dataclasses.replace(record(agent), obs=np.zeros(N_OBS, np.float32))


class ExplainingPlanner(FakePlanner):
    """The fake planner, also explaining: its body echoes what it was asked."""

    def __init__(self, version: str) -> None:
        super().__init__(version)
        self.explain = _Remote(self._explain)

    def _explain(self, obs: np.ndarray, objective: str, params: dict[str, np.ndarray], warm_start: np.ndarray | None,
                 proposals: np.ndarray | None, reward_model: str | None = None) -> dict[str, Any]:
        return {"model_version": self.version, "obs": obs.tolist(), "objective": objective,
                "zones": params[ZONES].tolist() if ZONES in params else None,
                "warm": warm_start is not None, "proposals": None if proposals is None else proposals.shape}


def _engine() -> PlanEngine:
    return PlanEngine(ExplainingPlanner("1.0.0"), FakeStore(), None, None, Metrics(), None)


def _explain(engine: PlanEngine, **fields: Any) -> Any:
    return asyncio.run(engine.explain(ExplainRequest(agent_id="a", **fields)))


def test_a_served_decision_is_explained_from_its_own_inputs() -> None:
    engine = _engine()
    goal = {"name": "goal", "no_fly_zones": [[1, 1, 0.5]]}
    first = run(engine, PlanRequest(agent_id="a", observation=[0.1] * N_OBS, objective=goal))[0]
    run(engine, PlanRequest(agent_id="a", observation=[0.2] * N_OBS, reward=0.0, prev_action=[0.5] * N_ACT))
    body = _explain(engine, plan_id=first.plan_id, proposals=[[0.1, 0.2]])
    assert body["obs"] == pytest.approx([0.1] * N_OBS) and body["objective"] == "goal"
    assert body["zones"] == [[[1, 1, 0.5]]] and not body["warm"] and body["proposals"] == (1, N_ACT)
    assert body["plan_id"] == first.plan_id and body["served"]["decision"] == "planned"
    assert body["served"]["action"] == first.action and body["model_version"] == "1.0.0"
    missing = _explain(engine, plan_id="f" * 32)
    assert isinstance(missing, Rejected) and missing.status == 404 and "'f" in missing.error


def test_the_current_state_is_the_agents_record() -> None:
    engine = _engine()
    assert _explain(engine).status == 404  # an agent the server does not know: nothing to explain
    run(engine, PlanRequest(agent_id="a", observation=[0.3] * N_OBS, objective={"name": "goal"}))
    body = _explain(engine)
    assert body["obs"] == pytest.approx([0.3] * N_OBS) and body["objective"] == "goal" and body["warm"]
    assert body["plan_id"] is None and body["served"] is None
    given = _explain(engine, observation=[0.0] * N_OBS, objective={"name": "learned"})
    assert given["obs"] == [0.0] * N_OBS and given["objective"] == "learned"
    asyncio.run(engine.reset(["a"]))
    assert _explain(engine).status == 404


def test_a_plan_request_with_explain_carries_its_explanation_and_its_replay_does_not() -> None:
    engine = _engine()
    req = PlanRequest(agent_id="a", observation=[0.1] * N_OBS, request_id="r1", explain={"proposals": [[0.0, 0.0]]})

    async def ask() -> Any:
        (answer,) = await engine.run([req], [time.monotonic()])
        return await engine.explained(req, answer)

    answer = asyncio.run(ask())
    assert answer.explanation["plan_id"] == answer.plan_id and answer.explanation["proposals"] == (1, N_ACT)
    replay = asyncio.run(ask())
    assert replay.replayed and replay.plan_id == answer.plan_id
    assert replay.explanation["plan_id"] == answer.plan_id  # a retry is explained again, from the store


def test_the_planner_deployment_decides_per_mode_and_explains_in_json(tmp_path) -> None:
    model_dir = save_model(_served_planner().model, tmp_path / "model")  # a tiny untrained Nav2D model
    server = PlannerServer(str(model_dir), None, {"plan": {"horizon": 5, "samples": 16, "iterations": 2}}, 60.0)
    info = asyncio.run(server.info())
    assert info["act_low"] == [-1.0, -1.0] and info["act_high"] == [1.0, 1.0] and info["policy"] is None
    goals = [rows.agent_objective(Objective(name="goal", max_speed=1.0, no_fly_zones=[(3, 0, 1)])), None]
    obs = np.array([[0, 0, 1, 0, 5, 0], [0.1] * N_OBS], np.float32)
    batch = asyncio.run(server.plan(obs, None, ["goal", "learned"], rows.constraints(goals), None, None,
                                    ["plan", "plan"]))
    assert batch.decision.shape == batch.shield.shape == batch.margin.shape == (2,)
    assert np.isfinite(batch.margin[0]) and np.isinf(batch.margin[1])  # the second agent has no constraints
    body = asyncio.run(server.explain(obs[0], "goal", rows.constraints(goals[:1]), None,
                                      np.array([[0.5, 0.5]], np.float32)))
    assert body["model_version"] == "1.0.0" and len(body["proposals"]) == 1
    assert len(body["chosen"]["trajectory"]) == 6 and body["chosen"]["margins"]["no_fly_zone"] is not None
    assert json.loads(encode(body)) is not None  # JSON as the route answers it


class _Served(_ServedPlans):
    """A planner deployment handle over a FleetPlanner in this process (``PlannerServer``'s calls)."""

    def __init__(self, service: FleetPlanner) -> None:
        super().__init__(service)
        self.explain = _Remote(lambda *args: service.explain(*args[:5]).to_dict() | {"model_version": service.version})


def test_policy_mode_answers_the_policys_action_and_the_policy_is_the_fallback() -> None:
    model = _served_planner().model
    spec = model.spec
    policy = PolicyNet(spec.obs_dim, spec.act_dim, spec.act_low, spec.act_high, zones=True)
    service = FleetPlanner(model, ServiceConfig(plan=PlanConfig(horizon=5, samples=16, iterations=2)), policy)
    service.warmup(sizes=(1,))
    engine = PlanEngine(_Served(service), FakeStore(), None, None, Metrics(), None)
    fast = run(engine, PlanRequest(agent_id="fast", observation=[0.1] * N_OBS, mode="policy"))[0]
    with torch.no_grad():
        expected = policy.act(torch.full((1, N_OBS), 0.1), {}).numpy()[0]
    assert (fast.decision, fast.fallback, fast.fallback_action_by) == ("policy", False, None)
    assert fast.action == pytest.approx(expected.tolist(), abs=1e-6)
    late = run(engine, PlanRequest(agent_id="late", observation=[0.1] * N_OBS, deadline_ms=0.01))[0]
    assert (late.decision, late.fallback_reason, late.fallback_action_by) == ("fallback", "deadline", "policy")
    body = asyncio.run(engine.explain(ExplainRequest(agent_id="late", plan_id=late.plan_id)))
    assert body["fallback_action_by"] == "policy" and body["served"]["fallback_action_by"] == "policy"


class _Shielding(FakePlanner):
    """The fake planner, its every answer shielded from speeding and still predicted 0.1 over the limit."""

    def _plan(self, obs: np.ndarray, *_: Any) -> Any:
        n = len(obs)
        return dataclasses.replace(super()._plan(obs), decision=np.full(n, Decision.SHIELDED, np.int8),
                                   shield=np.full(n, Constraint.SPEED, np.int8), margin=np.full(n, -0.1, np.float32))


def test_shield_interventions_and_predicted_and_observed_violations_are_counted() -> None:
    metrics = Metrics()
    engine = PlanEngine(_Shielding("1.0.0"), FakeStore(), None, None, metrics, None)
    limit = {"name": "goal", "max_speed": 1.0}
    run(engine, PlanRequest(agent_id="a", observation=[0, 0, 0.5, 0, 5, 5], objective=limit))
    run(engine, PlanRequest(agent_id="a", observation=[0, 0, 2.0, 0, 5, 5], objective=limit))  # went over it
    assert [tags for _, tags in metrics.shield.calls] == [{"model_version": "1.0.0", "constraint": "speed"}] * 2
    assert [(n, tags) for n, tags in metrics.violations.calls] == [
        (1, {"kind": "predicted", "constraint": "speed", "model_version": "1.0.0"}),
        (1, {"kind": "predicted", "constraint": "speed", "model_version": "1.0.0"}),
        (1, {"kind": "observed", "constraint": "speed", "model_version": "1.0.0"})]
