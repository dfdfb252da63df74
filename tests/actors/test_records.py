"""The serving path's typed records: the column form they travel in, the answer's JSON, the request ids kept."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from actors.records import REQUEST_IDS_KEPT, AgentRecord, AgentRecords, PlanAnswer, Rejected, remember_request
from serving.schema import PlanResponse

ANSWER = PlanAnswer(action=[0.5, -0.5], model_version="1.0.0", plan_id="p", disagreement=0.1, fallback=False,
                    fallback_reason=None)


def _record(i: int, warm_start: np.ndarray | None) -> AgentRecord:
    return AgentRecord(agent_id=f"a{i}", eps_id=f"e{i}", t=i, model_version="1.0.0", updated=1.0 * i,
                       request_ids=(f"r{i}",), answer=ANSWER, obs=np.full(3, i, np.float32),
                       action=np.zeros(2, np.float32), warm_start=warm_start)


def test_records_travel_as_columns_and_come_back_equal_and_unshared() -> None:
    records = [_record(i, np.full((2, 2), i, np.float32) if i != 1 else None) for i in range(3)]
    packed = AgentRecords.pack(records)
    assert len(packed) == 3
    assert packed.columns["obs"].shape == (3, 3) and packed.columns["obs"].dtype == np.float32  # one buffer
    assert isinstance(packed.columns["warm_start"], list)  # a None among the arrays: kept per record
    assert packed.columns["hidden"] == [None] * 3
    back = packed.unpack()
    for got, sent in zip(back, records):
        for f in dataclasses.fields(AgentRecord):
            a, b = getattr(got, f.name), getattr(sent, f.name)
            assert (np.array_equal(a, b) if isinstance(b, np.ndarray) else a == b), f.name
        assert got.obs.base is None  # a copy: a kept record keeps no batch alive
    assert AgentRecords.pack([]).unpack() == []


def test_columns_of_another_form_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="columns must be"):
        AgentRecords({"agent_id": ["a"]})
    columns = dict(AgentRecords.pack([_record(0, None)]).columns, t=[0, 1])
    with pytest.raises(ValueError, match="one length"):
        AgentRecords(columns)


def test_an_answer_is_the_api_response_body() -> None:
    body = ANSWER.to_dict()
    assert set(body) == set(PlanResponse.model_fields)
    assert PlanResponse.model_validate(body).model_dump() == body
    assert ANSWER.replay().replayed and not ANSWER.replayed
    assert Rejected(409, "no").to_dict() == {"error": "no"}


def test_request_ids_are_kept_newest_last_and_bounded() -> None:
    ids: tuple[str | None, ...] = ()
    for i in range(REQUEST_IDS_KEPT + 3):
        ids = remember_request(ids, f"r{i}")
    assert len(ids) == REQUEST_IDS_KEPT and ids[-1] == f"r{REQUEST_IDS_KEPT + 2}" and "r2" not in ids
    record = _record(0, None)
    assert record.last_request_id == "r0" and record.continuing
    assert not dataclasses.replace(record, obs=None).continuing
