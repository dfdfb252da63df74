"""The fast route's plumbing without Ray: which paths it takes, how it reads a body and writes an answer."""

from __future__ import annotations

import asyncio
import dataclasses
import json

from actors.records import PlanAnswer
from serving.front import _read_body, _route_path, encode, public_body


def test_the_route_path_drops_the_apps_root_path() -> None:
    assert _route_path({"path": "/v1/plan", "root_path": ""}) == "/v1/plan"
    assert _route_path({"path": "/fleet/v1/plan", "root_path": "/fleet"}) == "/v1/plan"  # route_prefix /fleet
    assert _route_path({"path": "/v1/plan"}) == "/v1/plan"


def test_a_body_is_read_whole_or_not_at_all() -> None:
    def connection(*messages: dict):
        queue = list(messages)

        async def receive() -> dict:
            return queue.pop(0)

        return receive

    chunks = connection({"type": "http.request", "body": b'{"a"', "more_body": True},
                        {"type": "http.request", "body": b": 1}", "more_body": False})
    gone = connection({"type": "http.request", "body": b'{"a"', "more_body": True}, {"type": "http.disconnect"})
    assert asyncio.run(_read_body(chunks)) == b'{"a": 1}'
    assert asyncio.run(_read_body(gone)) is None


def test_an_answer_has_every_field_and_non_finite_numbers_as_null() -> None:
    answer = PlanAnswer(action=[0.5], model_version="1.0.0", plan_id="p", disagreement=float("nan"), fallback=False,
                        fallback_reason=None)
    assert json.loads(encode(public_body(answer))) == {"action": [0.5], "model_version": "1.0.0", "plan_id": "p",
                                                   "disagreement": None, "fallback": False, "fallback_reason": None,
                                                   "decision": "planned", "shielded_constraint": None,
                                                   "fallback_action_by": None, "margin": None,
                                                   "replayed": False}  # a trajectory, an explanation: when asked
    asked = dataclasses.replace(answer, trajectory=[[float("inf"), 1.0]])
    assert json.loads(encode({"responses": [public_body(asked)]}))["responses"][0]["trajectory"] == [[None, 1.0]]
