"""API v1's bodies and the OpenAPI schema the app publishes, without Ray: what is accepted, what is
refused with a message naming the field, and that the schema states what the server checks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from serving.app import api
from serving.schema import PlanRequest, PlanResponse, served_openapi

OK = {"agent_id": "a1", "observation": [0.0] * 6}


def test_a_request_with_every_field_parses() -> None:
    req = PlanRequest.model_validate_json(json.dumps(OK | {
        "reward": -1.5, "terminated": True, "truncated": False, "t": 7, "prev_action": [0.5, -0.5],
        "objective": {"name": "goal", "no_fly_zones": [[0, 0, 1]]}, "deadline_ms": 50, "request_id": "r-0a:1",
        "return_trajectory": True}))
    assert req.terminated and req.t == 7 and req.prev_action == [0.5, -0.5] and req.request_id == "r-0a:1"


@pytest.mark.parametrize("extra, field", [
    ({"terminated": "yes"}, "terminated"),  # a string is not a boolean
    ({"truncated": 1}, "truncated"),
    ({"return_trajectory": "true"}, "return_trajectory"),
    ({"done": True}, "done"),  # renamed `terminated`: an unknown field now
    ({"t": -1}, "t"),
    ({"t": 1.5}, "t"),
    ({"prev_action": []}, "prev_action"),
    ({"prev_action": [1e7, 0.0]}, "prev_action"),
    ({"prev_action": ["left", 0.0]}, "prev_action"),
    ({"agent_id": "a1\n"}, "agent_id"),  # the whole string must match: no trailing newline
    ({"request_id": "r1\nr2"}, "request_id"),  # an error naming it stays one line
    ({"request_id": ""}, "request_id"),
    ({"deadline_ms": 0}, "deadline_ms"),
    ({"objective": {"name": "analytic"}}, "objective"),
])
def test_invalid_fields_are_refused_by_name(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        PlanRequest.model_validate_json(json.dumps(OK | extra))
    assert err.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize("observation", ["[NaN, 0, 0, 0, 0, 0]", "[0, Infinity, 0, 0, 0, 0]", "[1e400, 0, 0, 0, 0, 0]"])
def test_non_finite_numbers_are_refused(observation: str) -> None:
    with pytest.raises(ValidationError, match="finite"):
        PlanRequest.model_validate_json('{"agent_id": "a", "observation": %s}' % observation)


def test_the_response_names_disagreement_and_the_fallback_reason() -> None:
    fields = set(PlanResponse.model_fields)
    assert {"disagreement", "fallback", "fallback_reason"} <= fields and "uncertainty" not in fields
    with pytest.raises(ValidationError):
        PlanResponse(action=[0.0], model_version="1", plan_id="p", disagreement=0.1, fallback=True,
                     fallback_reason="tired")


def _schema() -> dict[str, Any]:
    return FastAPI.openapi(api)


def test_served_openapi_states_the_models_sizes_and_leaves_its_input_alone() -> None:
    base = _schema()
    before = json.dumps(base, sort_keys=True)
    served = served_openapi(base, obs_dim=6, act_dim=2)
    assert json.dumps(base, sort_keys=True) == before
    props = served["components"]["schemas"]["PlanRequest"]["properties"]
    assert props["observation"]["minItems"] == props["observation"]["maxItems"] == 6
    (array,) = [b for b in props["prev_action"]["anyOf"] if b.get("type") == "array"]
    assert array["minItems"] == array["maxItems"] == 2
    action = served["components"]["schemas"]["PlanResponse"]["properties"]["action"]
    assert action["minItems"] == action["maxItems"] == 2


def test_the_schema_states_every_check_the_server_makes_on_its_own() -> None:
    schema = _schema()
    (param,) = schema["paths"]["/v1/agents/{agent_id}/reset"]["post"]["parameters"]
    assert param["schema"]["pattern"] == schema["components"]["schemas"]["PlanRequest"]["properties"][
        "agent_id"]["pattern"]
    request = schema["components"]["schemas"]["PlanRequest"]["properties"]
    assert request["observation"]["items"] == {"type": "number", "minimum": -1e6, "maximum": 1e6}
    assert request["terminated"]["type"] == "boolean" and "done" not in request
    assert all(p.get("description") for p in request.values())  # the fields are the API's documentation
    plan = schema["paths"]["/v1/plan"]["post"]
    assert plan["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PlanRequest")
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for status in ("401", "409", "422", "503"):
        assert plan["responses"][status]["content"]["application/json"]["schema"] == error
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # a 422 is an ErrorBody too
