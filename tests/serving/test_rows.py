"""The engine's pure per-batch steps (``serving.rows``): which requests close a transition, what the
planner starts from. Records of another model or horizon, and new episodes, give it nothing to start from."""

from __future__ import annotations

import dataclasses

import numpy as np

from actors.records import AgentObjective, AgentRecord
from planners.base import Fallback
from planners.served import PlanBatch, empty_batch
from serving import rows
from serving.schema import PlanRequest
from tests.serving.test_engine import record

S, A, H = 6, 2, 4


def _continuing(obs_dim: int = S, act_dim: int = A, horizon: int = H, t: int = 3) -> AgentRecord:
    """A record in the middle of an episode, at step ``t``, planned by a model of these sizes."""
    return dataclasses.replace(record("a1"), t=t, obs=np.zeros(obs_dim, np.float32),
                               action=np.full(act_dim, 0.5, np.float32),
                               warm_start=np.ones((horizon, act_dim), np.float32), hidden=np.ones(8, np.float32))


def _req(t: int | None = 4, prev_action: list[float] | None = None, **fields: object) -> PlanRequest:
    return PlanRequest(**{"agent_id": "a1", "observation": [0.0] * S, "reward": 1.0, "t": t,
                          "prev_action": prev_action, **fields})


def test_a_transition_closes_only_with_the_reported_action() -> None:
    rec = _continuing()
    step = rows.continuation(_req(prev_action=[0.25, -0.25]), rec)
    assert step.same_episode and step.action.tolist() == [0.25, -0.25] and step.unlogged is None
    assert rows.continuation(_req(), rec) == rows.Continuation(True, None, "no_prev_action")
    assert rows.continuation(_req(reward=None, prev_action=[0.0, 0.0]), rec).unlogged == "no_reward"


def test_a_record_of_another_model_is_a_new_episode() -> None:
    assert rows.continuation(_req(prev_action=[0.0, 0.0]), _continuing(obs_dim=5)) == \
        rows.Continuation(False, None, "shape")
    assert rows.continuation(_req(prev_action=[0.0, 0.0, 0.0]), _continuing()) == \
        rows.Continuation(False, None, "shape")


def test_gaps_and_restarts_break_the_episode() -> None:
    rec = _continuing(t=3)
    assert rows.continuation(_req(t=6, prev_action=[0.0, 0.0]), rec) == rows.Continuation(False, None, "gap")
    assert rows.continuation(_req(t=0), rec) == rows.Continuation(False, None, "restart")
    assert rows.unlogged([rows.continuation(_req(t=6), rec), rows.continuation(_req(t=0), rec),
                          rows.continuation(_req(t=7), rec)]) == {"gap": 2, "restart": 1}


def test_a_new_episode_starts_from_no_plan_or_hidden_state() -> None:
    records = [_continuing(), _continuing(), None]
    steps = [rows.continuation(_req(), records[0]), rows.continuation(_req(t=0), records[1]),
             rows.continuation(_req(t=0), None)]
    for name in ("warm_start", "hidden"):
        out = rows.stacked(records, steps, name)
        assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1:])), name
    assert rows.stacked([records[1]], [steps[1]], "warm_start") is None


def test_a_plan_of_another_horizon_is_no_start() -> None:
    records = [_continuing(), _continuing(), _continuing(horizon=7)]
    steps = [rows.continuation(_req(), r) for r in records]
    out = rows.stacked(records, steps, "warm_start")
    assert out.shape == (3, H, A) and np.all(np.isfinite(out[:2])) and np.all(np.isnan(out[2]))


def test_a_served_transition_says_whether_it_broke_the_zones_its_previous_request_gave() -> None:
    """Served logs carry the violation test as collected logs do: the zones the agent was given, at its new
    observation (an agent given none broke none)."""
    zone = AgentObjective(no_fly_zones=((1.0, 0.0, 0.5),))
    records = [dataclasses.replace(_continuing(), agent_id=f"a{i}", objective=objective)
               for i, objective in enumerate((zone, zone, None))]
    requests = [_req(prev_action=[0.5, 0.5], agent_id=f"a{i}") for i in range(3)]
    obs = np.zeros((3, S), np.float32)
    obs[[0, 2], 0] = 1.1  # inside the zone (given to a0, not to a2); a1 at the origin, outside it
    steps = [rows.continuation(req, rec) for req, rec in zip(requests, records)]
    flags = rows.violation_flags(records, steps, obs)
    assert rows.transitions(requests, records, steps, obs, flags).violations.tolist() == [1, 0, 0]
    robot = [_req(prev_action=[0.5, 0.5], site="floor-1")]  # a warehouse robot's contacts are not tested here
    assert rows.transitions(robot, records[:1], [rows.continuation(robot[0], records[0])], obs[:1], flags[:1]) \
        .violations.tolist() == [-1]


def test_a_held_plan_is_named_only_for_the_deadline_and_zero_for_other_reasons() -> None:
    out = empty_batch(3, 4, 2, 2)
    out["fallback_reason"][:] = [Fallback.DEADLINE, Fallback.UNCERTAINTY, Fallback.NONE]
    batch = PlanBatch(**out, hidden=None, iterations=0, elapsed_ms=1.0, model_version="0.1.0", fallback_source="plan")
    requests = [PlanRequest(agent_id=f"a{i}", observation=[0.0, 0.0]) for i in range(3)]
    held = np.zeros((3, 4, 2), np.float32)
    assert [a.fallback_action_by for a in rows.answers(requests, batch, held)] == ["plan", "zero", None]
    held[0] = np.nan  # no plan to hold (a fresh agent's, or one used up): the zero action acted
    assert [a.fallback_action_by for a in rows.answers(requests, batch, held)] == ["zero", "zero", None]
    assert [a.fallback_action_by for a in rows.answers(requests, batch, None)] == ["zero", "zero", None]
    policy = dataclasses.replace(batch, fallback_source="policy")
    assert policy.fallback_by() == ["policy", "policy", None]


def test_a_held_plan_is_used_up_after_its_horizon_and_counts_only_held_answers() -> None:
    """Each answer that acted on the held plan counts; after H - 1 in a row the agent has acted on every step of
    its last plan, so it has none left to hold (NaN: the zero action when late, the box centre when in time)."""
    out = empty_batch(2, H, S, A)
    out["fallback_reason"][:] = [Fallback.DEADLINE, Fallback.NONE]
    batch = PlanBatch(**out, hidden=None, iterations=0, elapsed_ms=1.0, model_version="0.1.0", fallback_source="plan")
    requests = [_req(t=None, agent_id=f"a{i}") for i in range(2)]  # each the step after its record's
    answered = rows.answers(requests, batch, np.zeros((2, H, A), np.float32))
    records: list[AgentRecord | None] = [dataclasses.replace(_continuing(), agent_id=f"a{i}") for i in range(2)]
    for held in range(1, H):
        steps = [rows.continuation(req, rec) for req, rec in zip(requests, records)]
        assert np.isfinite(rows.warm_starts(records, steps)).all()
        records = list(rows.new_records(requests, records, steps, np.zeros((2, S), np.float32), batch, answered,
                                        [None, None]))
        assert [r.held for r in records] == [held, 0]
    steps = [rows.continuation(req, rec) for req, rec in zip(requests, records)]
    warm = rows.warm_starts(records, steps)
    assert np.isnan(warm[0]).all() and np.isfinite(warm[1]).all()
    assert rows.used_up(records[0]) and not rows.used_up(records[1])
    restart = [_req(t=0, agent_id="a0")]  # a new episode starts the count again
    fresh = rows.new_records(restart, records[:1], [rows.continuation(restart[0], records[0])],
                             np.zeros((1, S), np.float32), dataclasses.replace(batch, **{
                                 k: v[:1] for k, v in out.items()}), answered[:1], [None])
    assert fresh[0].held == 1
