"""Which transitions the engine logs: only those whose both ends and action the server knows.

The engine runs against the real state store and shards (in this process, without Ray) and a logger
that keeps what it is sent. Each test is a request sequence a client can produce.
"""

from __future__ import annotations

import asyncio

import pytest

from actors.records import PlanAnswer, RecordCache, Rejected
from serving.engine import PlanEngine
from serving.schema import PlanRequest
from tests.serving.test_engine import N_OBS, FakeLogger, FakePlanner, Metrics, local_store, run
from worldmodel.data import Transitions

PLANNED = [0.5, 0.5]
"""What ``FakePlanner`` answers every agent."""


def _engine(cache: bool = False) -> tuple[PlanEngine, FakeLogger, FakePlanner]:
    logger, planner = FakeLogger(), FakePlanner("1.0.0")
    engine = PlanEngine(planner, local_store(), logger, None, Metrics(), None, RecordCache(3600) if cache else None)
    return engine, logger, planner


def _req(t: int | None, reward: float | None = 1.0, **fields: object) -> PlanRequest:
    return PlanRequest(agent_id="a1", observation=[float(t or 0)] * N_OBS, reward=reward, t=t, **fields)


def _rows(logger: FakeLogger) -> list[tuple]:
    """(eps_id, t, action, obs[0], new_obs[0], model_version) of every logged row, in order."""
    out = []
    for batch in logger.batches:
        assert isinstance(batch, Transitions)
        for i in range(len(batch)):
            out.append((batch.eps_id[i], int(batch.t[i]), batch.actions[i].tolist(), float(batch.obs[i, 0]),
                        float(batch.new_obs[i, 0]), batch.model_version[i]))
    return out


@pytest.mark.parametrize("cache", [False, True])
def test_without_errors_every_step_is_logged_once_in_one_episode(cache: bool) -> None:
    engine, logger, _ = _engine(cache)
    for t in range(4):
        answer, = run(engine, _req(t, reward=None if t == 0 else 1.0, prev_action=None if t == 0 else PLANNED,
                                   request_id=f"r{t}"))
        assert isinstance(answer, PlanAnswer) and answer.action == PLANNED
    rows = _rows(logger)
    assert [(t, a, o, n, v) for _, t, a, o, n, v in rows] == [(t, PLANNED, t, t + 1, "1.0.0") for t in range(3)]
    assert len({eps for eps, *_ in rows}) == 1


def test_a_client_that_sends_no_t_logs_the_same_rows() -> None:
    with_t, without = _engine(), _engine()
    for t in range(4):
        req = _req(t, reward=None if t == 0 else 1.0, prev_action=None if t == 0 else PLANNED)
        run(with_t[0], req)
        run(without[0], req.model_copy(update={"t": None}))
    assert [r[1:] for r in _rows(with_t[1])] == [r[1:] for r in _rows(without[1])] != []


def test_without_prev_action_nothing_is_logged_and_the_episode_goes_on_counted() -> None:
    engine, logger, _ = _engine()
    run(engine, _req(0, reward=None))
    run(engine, _req(1))  # the server cannot know what the agent did: no guessed row
    run(engine, _req(2))
    assert _rows(logger) == [] and engine.stats()["unlogged"] == {"no_prev_action": 2}
    first, = asyncio.run(engine.store.get(["a1"]))
    run(engine, _req(3, prev_action=PLANNED))
    (eps, t, action, o, n, _), = _rows(logger)
    assert (eps, t, action, o, n) == (first.eps_id, 2, PLANNED, 2.0, 3.0)  # the same episode, going on


def test_gaps_and_restarts_are_counted_by_reason() -> None:
    engine, logger, _ = _engine()
    run(engine, _req(0, reward=None))
    run(engine, _req(2, prev_action=PLANNED))  # t=1 never arrived
    run(engine, _req(0, reward=None))  # a new episode without the last one ending
    run(engine, _req(1, reward=None, prev_action=PLANNED))
    assert _rows(logger) == []
    assert engine.stats()["unlogged"] == {"gap": 1, "restart": 1, "no_reward": 1}


def test_a_lost_answer_logs_the_action_the_agent_executed() -> None:
    engine, logger, _ = _engine()
    run(engine, _req(0, reward=None, request_id="r0"))
    run(engine, _req(1, request_id="r1", prev_action=PLANNED))
    # r1's answer never reached the agent: it acted on its own and says so with its next step.
    own = [0.25, -0.75]
    run(engine, _req(2, request_id="r2", prev_action=own))
    (_, t0, a0, *_), (_, t1, a1, o1, n1, v1) = _rows(logger)
    assert (t0, a0) == (0, PLANNED)
    assert (t1, a1, o1, n1) == (1, own, 1.0, 2.0)
    assert v1 == ""  # no model version chose that action


def test_a_step_the_server_never_saw_breaks_the_episode() -> None:
    engine, logger, _ = _engine()
    run(engine, _req(0, reward=None))
    run(engine, _req(1, prev_action=PLANNED))
    run(engine, _req(3, prev_action=PLANNED))  # t=2 never arrived: nothing spans the gap
    assert [r[1] for r in _rows(logger)] == [0]
    run(engine, _req(4, prev_action=PLANNED))
    rows = _rows(logger)
    assert [(t, o, n) for _, t, _, o, n, _ in rows] == [(0, 0.0, 1.0), (3, 3.0, 4.0)]
    assert rows[0][0] != rows[1][0]  # a new logged episode after the gap
    stored, = asyncio.run(engine.store.get(["a1"]))
    assert stored.t == 4 and stored.eps_id == rows[1][0]  # the agent's own step index is kept


def test_an_out_of_order_retry_is_refused_and_changes_nothing() -> None:
    engine, logger, planner = _engine()
    run(engine, _req(0, reward=None, request_id="r3"))
    r4, = run(engine, _req(1, request_id="r4", prev_action=PLANNED))
    logged, calls = _rows(logger), planner.calls
    again, = run(engine, _req(0, reward=None, request_id="r3"))
    assert again == Rejected(409, "request_id 'r3' for agent 'a1' was already answered and superseded by 'r4'")
    assert again.to_dict() == {"error": again.error}
    assert planner.calls == calls and _rows(logger) == logged  # nothing planned, nothing logged
    assert run(engine, _req(1, request_id="r4", prev_action=PLANNED)) == [r4.replay()]  # the last id: replayed
    run(engine, _req(2, request_id="r5", prev_action=PLANNED))
    assert [r[1] for r in _rows(logger)] == [0, 1]  # the episode goes on where r4 left it


def test_two_steps_of_one_agent_in_one_batch_are_answered_in_order_in_two_passes() -> None:
    engine, logger, planner = _engine(cache=True)
    answers = run(engine, _req(0, reward=None, request_id="r0"), _req(1, request_id="r1", prev_action=PLANNED),
                  _req(1, request_id="r1", prev_action=PLANNED))
    assert planner.calls == 2 and answers[2] == answers[1].replay()
    assert [(t, o, n) for _, t, _, o, n, _ in _rows(logger)] == [(0, 0.0, 1.0)]
