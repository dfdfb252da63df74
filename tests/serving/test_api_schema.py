"""API v1's bodies and the OpenAPI schema the app publishes, without Ray: what is accepted, what is
refused with a message naming the field, and that the schema states what the server checks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from serving.app import api
from serving.explain import ExplainRequest, check_explain
from serving.schema import PlanRequest, PlanResponse
from serving.served_checks import check_request, served_openapi

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
    served = served_openapi(base, obs_dim=6, act_dim=2, modes=["plan"])
    assert json.dumps(base, sort_keys=True) == before
    assert served["components"]["schemas"]["PlanRequest"]["properties"]["mode"]["enum"] == ["plan"]
    props = served["components"]["schemas"]["PlanRequest"]["properties"]
    assert props["observation"]["minItems"] == props["observation"]["maxItems"] == 6
    (array,) = [b for b in props["prev_action"]["anyOf"] if b.get("type") == "array"]
    assert array["minItems"] == array["maxItems"] == 2
    action = served["components"]["schemas"]["PlanResponse"]["properties"]["action"]
    assert action["minItems"] == action["maxItems"] == 2
    explain = served["components"]["schemas"]["ExplainRequest"]["properties"]["observation"]["anyOf"]
    assert [(b["minItems"], b["maxItems"]) for b in explain if b.get("type") == "array"] == [(6, 6)]
    assert "site" in props  # a warehouse fleet model's robots name their site
    lone = served_openapi(base, obs_dim=6, act_dim=2, sites=False)
    assert "site" not in lone["components"]["schemas"]["PlanRequest"]["properties"]
    # what the served model reads is required, the other left out: a vector model's observation, a camera's frame
    request = served["components"]["schemas"]["PlanRequest"]
    assert "observation" in request["required"] and "image" not in request["properties"]
    camera = served_openapi(base, obs_dim=0, act_dim=2, camera=True)["components"]["schemas"]["PlanRequest"]
    assert "image" in camera["required"] and "observation" not in camera["properties"]


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


SPEC = {"model_version": "1.0.0", "env_id": "Nav2D-v0", "obs_dim": 6, "act_dim": 2, "act_low": [-1.0, -1.0],
        "act_high": [1.0, 1.0], "objectives": ["learned", "goal"], "zones": True, "horizon": 4, "modes": ["plan"]}
"""A served model's ``info()`` as ``check_request`` reads it: Nav2D without a policy."""


@pytest.mark.parametrize("objective, field", [
    ({"bounds": [[1, 0], [0, 1]]}, "bounds"),  # xlo > xhi
    ({"bounds": [[0, 0], [1]]}, "bounds"),
    ({"bounds": [[0, "inf"], [1, 1]]}, "bounds"),
    ({"max_speed": -1}, "max_speed"),
    ({"max_speed": "NaN"}, "max_speed"),
    ({"action_bounds": [[0.5, 0], [0, 1]]}, "action_bounds"),  # low > high
    ({"action_bounds": [[0, 0], [1]]}, "action_bounds"),  # sizes differ
    ({"action_bounds": [[], []]}, "action_bounds"),
])
def test_bad_constraints_are_refused_naming_the_field(objective: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        PlanRequest.model_validate_json(json.dumps(OK | {"objective": objective}))
    assert err.value.errors()[0]["loc"][:2] == ("objective", field), err.value.errors()


@pytest.mark.parametrize("extra, field", [
    ({"mode": "fast"}, "mode"),
    ({"explain": "yes"}, "explain"),
    ({"explain": {"proposals": [[0.1, 0.2], [[0.1, 0.2]]]}}, "explain"),  # actions and sequences mixed
    ({"explain": {"why": True}}, "explain"),
])
def test_bad_modes_and_explain_options_are_refused_by_name(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        PlanRequest.model_validate_json(json.dumps(OK | extra))
    assert err.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize("extra, problem", [
    ({"mode": "policy"}, "mode: 'policy' needs a policy"),
    ({"objective": {"action_bounds": [[-2, 0], [0, 1]]}}, "objective.action_bounds: [[-2.0, 0.0], [0.0, 1.0]] is "
                                                          "not inside the model's action box"),
    ({"objective": {"action_bounds": [[0, 0, 0], [1, 1, 1]]}}, "objective.action_bounds: has 3 values per bound"),
    ({"explain": {"proposals": [[0.1, 0.2, 0.3]]}}, "explain.proposals.0: an action of the wrong size"),
    ({"explain": {"proposals": [[[0.1, 0.2]] * 3]}}, "explain.proposals.0: a sequence of 3 actions; the served "
                                                     "horizon is 4"),
])
def test_what_depends_on_the_served_model_is_checked_by_name(extra: dict[str, Any], problem: str) -> None:
    req = PlanRequest.model_validate_json(json.dumps(OK | extra))
    assert problem in (check_request(req, SPEC, "requests.2.") or ""), check_request(req, SPEC)
    assert check_request(req, SPEC, "requests.2.").startswith("requests.2.")  # type: ignore[union-attr]


def test_constraints_and_modes_that_the_model_serves_pass() -> None:
    req = PlanRequest.model_validate_json(json.dumps(OK | {"mode": "policy", "explain": {"proposals": [[0.1, 0.2]]},
                                                           "objective": {"name": "goal", "bounds": [[-5, -5], [5, 5]],
                                                                         "max_speed": 2, "action_bounds": [[-1, 0],
                                                                                                           [0.5, 1]]}}))
    assert check_request(req, SPEC | {"modes": ["plan", "policy"]}) is None
    assert req.proposals == [[0.1, 0.2]] and PlanRequest(**OK).proposals is None
    assert PlanRequest(**OK, explain=True).proposals == []
    pendulum = SPEC | {"env_id": "Pendulum-v1", "zones": False, "objectives": ["learned"]}
    boxed = PlanRequest.model_validate_json(json.dumps(OK | {"objective": {"bounds": [[0, 0], [1, 1]]}}))
    assert check_request(boxed, pendulum) == "objective.bounds: Pendulum-v1 has no positions to constrain"


def test_an_explain_request_is_one_decision_or_one_state() -> None:
    assert ExplainRequest(agent_id="a1", plan_id="0" * 32).plan_id == "0" * 32
    for bad, field in (({"plan_id": "0" * 32, "observation": [0.0] * 6}, "plan_id"), ({"plan_id": "P-1"}, "plan_id"),
                       ({"proposals": [[0.1, 0.2], [[0.1, 0.2]]]}, "proposals"), ({"colour": 1}, "colour")):
        with pytest.raises(ValidationError) as err:
            ExplainRequest.model_validate({"agent_id": "a1", **bad})
        assert field in str(err.value), err.value
    req = ExplainRequest(agent_id="a1", observation=[0.0] * 5, proposals=[[0.1, 0.2]])
    assert check_explain(req, SPEC) == "observation: has 5 values, model 1.0.0 (Nav2D-v0) expects 6"


def test_the_response_says_why_the_action_was_taken() -> None:
    fields = set(PlanResponse.model_fields)
    assert {"decision", "shielded_constraint", "fallback_action_by", "margin", "explanation"} <= fields
    ok = dict(action=[0.0], model_version="1", plan_id="p", disagreement=0.1, fallback=True, fallback_reason="deadline")
    assert PlanResponse(**ok, decision="shielded", shielded_constraint="no_fly_zone", fallback_action_by="policy",
                        margin=-0.2).decision == "shielded"
    for bad in ({"decision": "guessed"}, {"shielded_constraint": "wall"}, {"fallback_action_by": "human"}):
        with pytest.raises(ValidationError):
            PlanResponse(**ok, **bad)


def test_the_explain_route_is_documented_with_its_errors() -> None:
    schema = _schema()
    route = schema["paths"]["/v1/explain"]["post"]
    assert route["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ExplainRequest")
    assert {"400", "401", "404", "422", "503"} <= set(route["responses"])
    request = schema["components"]["schemas"]["ExplainRequest"]["properties"]
    assert request["plan_id"]["anyOf"][0]["pattern"] == "^[0-9a-f]{32}$" and all(p.get("description")
                                                                                for p in request.values())
    plan = schema["components"]["schemas"]["PlanRequest"]["properties"]
    assert plan["mode"]["enum"] == ["plan", "policy"] and plan["explain"]["description"]
