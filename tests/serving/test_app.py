"""The fleet endpoint on one shared Ray: batching, validation, auth, error bodies, the OpenAPI schema,
exactly-once telemetry, refused retries, health, version switches.

One app serves the module: the registry's production version with a shadow, telemetry
to a log directory, and a bearer token.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import pytest
import requests

from actors.ports import free_port
from actors.state import StateConfig
from serving.config import AppConfig
from serving.deploy import deploy, shutdown_app
from tests.ray_fixtures import ray_local  # noqa: F401
from tests.worldmodel.conftest import TINY_MODEL, TINY_TRAIN
from worldmodel.config import TrainConfig
from worldmodel.data import read_transitions
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.collect import collect
from worldmodel.registry import ModelRegistry
from worldmodel.training import train_world_model

pytestmark = pytest.mark.slow
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STATE = StateConfig(shards=2, name="test-serve-state")


@pytest.fixture(scope="module")
def app(ray_local, tmp_path_factory) -> Iterator[dict[str, Any]]:  # noqa: F811
    root = tmp_path_factory.mktemp("serve")
    data = collect("Nav2D-v0", episodes=8, seed=0)
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    registry = ModelRegistry(str(root / "registry"))
    v1 = registry.register(train_world_model(data, spec, TINY_MODEL, TINY_TRAIN))
    registry.promote(v1.version, "production")
    v2 = registry.register(train_world_model(data, spec, TINY_MODEL, TrainConfig(epochs=3, seed=1)))
    registry.promote(v2.version, "shadow")
    url = deploy("production", registry_uri=str(root / "registry"), shadow="shadow", log_uri=str(root / "logs"),
                 port=free_port(), token=TOKEN, state=STATE, service={"plan": {"horizon": 8, "samples": 16}})
    info = {"url": url, "registry": registry, "logs": root / "logs", "v1": v1.version, "v2": v2.version}
    yield info
    shutdown_app(STATE)


def _obs(rng: np.random.Generator) -> list[float]:
    return rng.uniform(-1, 1, 6).round(4).tolist()


def _post(app: dict, body: Any, path: str = "/v1/plan", headers: dict | None = None,
          raw: bool = False) -> requests.Response:
    kwargs = {"data": body, "headers": {**AUTH, "Content-Type": "application/json", **(headers or {})}} if raw \
        else {"json": body, "headers": headers if headers is not None else AUTH}
    return requests.post(app["url"] + path, timeout=30, **kwargs)


def test_plan_answers_with_action_version_and_audit_trail(app) -> None:
    r = _post(app, {"agent_id": "solo", "observation": [0.1] * 6, "return_trajectory": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["action"]) == 2 and all(-1 <= a <= 1 for a in body["action"])
    assert body["model_version"] == app["v1"] and not body["replayed"]
    assert len(body["trajectory"]) == 9 and len(body["trajectory"][0]) == 6  # H+1 predicted states
    assert isinstance(body["disagreement"], float) and isinstance(body["fallback"], bool)
    assert "uncertainty" not in body and (body["fallback_reason"] is not None) == body["fallback"]


def test_plan_takes_any_json_type_and_refuses_others(app) -> None:
    body = {"agent_id": "routes", "observation": [0.2] * 6, "reward": None}
    plain = _post(app, body)
    vendor = _post(app, json.dumps(body | {"agent_id": "routes-2"}), raw=True,
                   headers={"Content-Type": "application/vnd.fleet+json"})
    assert plain.status_code == vendor.status_code == 200, (plain.text, vendor.text)
    assert plain.headers["content-type"] == vendor.headers["content-type"] == "application/json"
    assert set(plain.json()) == set(vendor.json()) >= {"action", "model_version", "plan_id", "disagreement"}
    r = _post(app, json.dumps(body), raw=True, headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json() == {"error": "Content-Type: expected application/json, got 'text/plain'"}


def test_concurrent_requests_are_merged_into_batches(app) -> None:
    before = requests.get(app["url"] + "/v1/models", headers=AUTH, timeout=30).json()["batching"]
    rng = np.random.default_rng(0)
    bodies = [{"agent_id": f"burst-{i}", "observation": _obs(rng)} for i in range(48)]
    with ThreadPoolExecutor(48) as pool:
        codes = list(pool.map(lambda b: _post(app, b).status_code, bodies))
    assert codes == [200] * 48
    after = requests.get(app["url"] + "/v1/models", headers=AUTH, timeout=30).json()["batching"]
    batches, served = after["batches"] - before["batches"], after["requests"] - before["requests"]
    assert served == 48 and batches < 48  # more than one request per planner call
    assert after["largest_batch"] > 1


def test_batch_route_answers_in_order(app) -> None:
    reqs = [{"agent_id": f"b-{i}", "observation": [0.05 * i] * 6} for i in range(5)]
    r = _post(app, {"requests": reqs}, "/v1/plan/batch")
    assert r.status_code == 200, r.text
    assert len(r.json()["responses"]) == 5


BAD = [
    ({"agent_id": "x", "observation": [0.0] * 5}, "observation"),  # wrong length for the model
    ('{"agent_id": "x", "observation": [NaN, 0, 0, 0, 0, 0]}', "observation"),
    ('{"agent_id": "x", "observation": [Infinity, 0, 0, 0, 0, 0]}', "observation"),
    ({"agent_id": "x", "observation": [1e12, 0, 0, 0, 0, 0]}, "observation"),
    ({"agent_id": "x", "observation": [0.0] * 6, "objective": {"name": "fly-to-moon"}}, "objective"),
    ({"agent_id": "x", "observation": [0.0] * 6, "objective": {"no_fly_zones": [[0, 0]]}}, "no_fly_zones"),
    ({"agent_id": "x", "observation": [0.0] * 6, "colour": "red"}, "colour"),
    ({"agent_id": "../etc", "observation": [0.0] * 6}, "agent_id"),
    ({"observation": [0.0] * 6}, "agent_id"),
    ({"agent_id": "x", "observation": "fast"}, "observation"),
    ({"agent_id": "x", "observation": [0.0] * 6, "deadline_ms": -5}, "deadline_ms"),
    ({"agent_id": "x", "observation": [0.0] * 6, "reward": "lots"}, "reward"),
    ({"agent_id": "x", "observation": [0.0] * 6, "terminated": "yes"}, "terminated"),
    ({"agent_id": "x", "observation": [0.0] * 6, "done": True}, "done"),  # renamed terminated
    ({"agent_id": "x", "observation": [0.0] * 6, "prev_action": [0.0] * 3}, "prev_action"),  # the model's is 2
    ({"agent_id": "x", "observation": [0.0] * 6, "objective": {"bounds": [[1, 0], [0, 1]]}}, "objective.bounds"),
    ({"agent_id": "x", "observation": [0.0] * 6, "objective": {"action_bounds": [[-2, -1], [1, 1]]}},
     "objective.action_bounds"),  # outside the model's action box
    ({"agent_id": "x", "observation": [0.0] * 6, "mode": "policy"}, "mode"),  # the served model has no policy
    ({"agent_id": "x\n", "observation": [0.0] * 6}, "agent_id"),
    ('{"agent_id": "x", "observation": [0, 0', "body"),  # malformed JSON
    ("[]", "body"),
]


@pytest.mark.parametrize("body, field", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_input_is_a_4xx_naming_the_field(app, body: Any, field: str) -> None:
    r = _post(app, body, raw=isinstance(body, str))
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert field in r.json()["error"] and "\n" not in r.json()["error"], r.json()
    assert _post(app, {"agent_id": "still-ok", "observation": [0.0] * 6}).status_code == 200


def test_bad_batch_and_reset_inputs(app) -> None:
    r = _post(app, {"requests": []}, "/v1/plan/batch")
    assert r.status_code == 422 and "requests" in r.json()["error"]
    r = _post(app, {"requests": [{"agent_id": "a", "observation": [0.0] * 6},
                                 {"agent_id": "b", "observation": [0.0] * 3}]}, "/v1/plan/batch")
    assert r.status_code == 422 and "requests.1.observation" in r.json()["error"]
    assert _post(app, {}, "/v1/agents/bad id!/reset").status_code == 422
    r = _post(app, {}, "/v1/agents/a1%0A/reset")  # a trailing newline, refused as the plan route refuses it
    assert r.status_code == 422 and r.json()["error"].startswith("agent_id: "), r.text


def test_every_error_body_is_one_error_line(app) -> None:
    for r, status in ((requests.get(app["url"] + "/v1/nothing-here", headers=AUTH, timeout=10), 404),
                      (requests.get(app["url"] + "/v1/plan", headers=AUTH, timeout=10), 405),
                      (_post(app, '{"requests": [', "/v1/plan/batch", raw=True), 422)):
        assert r.status_code == status and set(r.json()) <= {"error", "detail"}, r.text
        assert r.json()["error"] and "\n" not in r.json()["error"]


def test_bearer_token_is_required_before_anything_else(app) -> None:
    body = {"agent_id": "auth", "observation": [0.0] * 6}
    assert _post(app, body, headers={}).status_code == 401
    assert _post(app, body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert "token" in _post(app, body, headers={}).json()["error"]
    for path, invalid in (("/v1/plan", {"colour": 1}), ("/v1/plan/batch", {"requests": []})):
        r = _post(app, invalid, path, headers={})  # checked before the body: nothing about it is told
        assert r.status_code == 401 and set(r.json()) == {"error"}, r.text
    for path in ("/v1/models", "/openapi.json", "/docs", "/redoc"):
        assert requests.get(app["url"] + path, timeout=10).status_code == 401, path
        assert requests.get(app["url"] + path, headers=AUTH, timeout=10).status_code == 200, path
    health = requests.get(app["url"] + "/healthz", timeout=10)  # probes need no token
    assert health.status_code == 200 and health.json() == {"status": "ok", "model_version": app["v1"]}


def test_the_openapi_schema_states_the_served_sizes(app) -> None:
    schema = requests.get(app["url"] + "/openapi.json", headers=AUTH, timeout=10).json()
    request = schema["components"]["schemas"]["PlanRequest"]["properties"]
    assert request["observation"]["minItems"] == request["observation"]["maxItems"] == 6
    assert [b["maxItems"] for b in request["prev_action"]["anyOf"] if b.get("type") == "array"] == [2]
    (param,) = schema["paths"]["/v1/agents/{agent_id}/reset"]["post"]["parameters"]
    assert param["schema"]["pattern"] == request["agent_id"]["pattern"]


CROSS_FIELD = frozenset({"bounds", "action_bounds", "proposals", "plan_id"})
"""Fields with rules OpenAPI cannot state (a box's low corner <= its high corner, low <= high inside the
model's box, proposals of one form and the served horizon, a plan_id or an observation): a schema-valid
body using them may be refused with a 422 naming the rule."""


def _cross_field(body: Any) -> bool:
    if isinstance(body, dict):
        return any(key in CROSS_FIELD or _cross_field(value) for key, value in body.items())
    return isinstance(body, list) and any(_cross_field(value) for value in body)


def test_the_api_holds_to_its_openapi_schema(app) -> None:
    # Generated requests (valid and invalid) against the live app: no 5xx, every answer as documented.
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    schema = schemathesis.openapi.from_url(app["url"] + "/openapi.json", headers=AUTH, timeout=10)
    operations = [result.ok() for result in schema.get_all_operations()]
    cases = st.one_of(*(op.as_strategy(mode) for op in operations
                        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)))

    @settings(max_examples=80, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def holds(case: Any) -> None:
        excluded = [positive_data_acceptance] if _cross_field(case.body) else []
        case.call_and_validate(headers=AUTH, timeout=30, excluded_checks=excluded)

    holds()


def test_telemetry_is_logged_exactly_once_under_retries(app) -> None:
    rng = np.random.default_rng(1)
    agent, steps = "telemetry-agent", 6
    first: dict[str, Any] = {}
    for t in range(steps):
        body = {"agent_id": agent, "observation": _obs(rng), "reward": None if t == 0 else -0.5 * t,
                "terminated": t == steps - 1, "request_id": uuid.uuid4().hex, "t": t,
                "prev_action": first.get("action")}  # the agent executed the previous answer
        first = _post(app, body).json()
        for _ in range(2):  # the client timed out and retried the same request
            again = _post(app, body).json()
            assert again["replayed"] and again["plan_id"] == first["plan_id"]
    shutdown_stats = _flush_telemetry()
    assert shutdown_stats.written >= steps - 1
    logged = read_transitions(str(app["logs"]))
    mine = logged.select(np.flatnonzero(logged.agent_id == agent))
    assert len(mine) == steps - 1  # every closed transition once, none twice
    assert sorted(mine.t.tolist()) == list(range(steps - 1))
    assert mine.terminateds.sum() == 1 and mine.rewards[np.argsort(mine.t)].tolist() == pytest.approx(
        [-0.5 * t for t in range(1, steps)])


def _flush_telemetry() -> Any:
    import ray

    from actors.common import NAMESPACE
    logger = ray.get_actor(AppConfig.telemetry_name, namespace=NAMESPACE)
    ray.get(logger.flush.remote())
    return ray.get(logger.stats.remote())


def test_a_superseded_request_id_is_refused_and_nothing_is_planned(app) -> None:
    plan = {"agent_id": "r-order", "observation": [0.1] * 6}
    r3 = _post(app, plan | {"request_id": "r3", "t": 0}).json()
    _post(app, plan | {"request_id": "r4", "t": 1, "reward": 0.0})
    again = _post(app, plan | {"request_id": "r3", "t": 0})
    assert again.status_code == 409 and set(again.json()) == {"error"} and "'r3'" in again.json()["error"], again.text
    assert r3["plan_id"] not in again.text
    batch = _post(app, {"requests": [{"agent_id": "r-other", "observation": [0.0] * 6},
                                     plan | {"request_id": "r3", "t": 0}]}, "/v1/plan/batch")
    assert batch.status_code == 409 and batch.json()["error"].startswith("requests.1: "), batch.text


def test_health_is_degraded_while_telemetry_cannot_be_written(app) -> None:
    logs, moved = app["logs"], app["logs"].with_name("logs-moved")
    _flush_telemetry()  # the logger is up, its location checked, before the location breaks
    logs.mkdir(exist_ok=True)
    logs.rename(moved)
    logs.write_text("a regular file where the log directory was")
    try:
        for t in range(3):  # rows the logger cannot write
            _post(app, {"agent_id": "unwritten", "observation": [0.1 * t] * 6, "reward": 1.0 if t else None, "t": t,
                        "prev_action": [0.0, 0.0] if t else None})
        _flush_telemetry()
        deadline, health = time.monotonic() + 20, {}
        while time.monotonic() < deadline and health.get("status") != "degraded":
            time.sleep(0.5)  # the ingress refreshes the logger's stats in the background
            health = requests.get(app["url"] + "/healthz", timeout=10).json()
        assert health["status"] == "degraded" and health["telemetry_error"], health
    finally:
        logs.unlink()
        moved.rename(logs)
    _flush_telemetry()  # the location is back: the rows are written and the error cleared
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and health.get("status") != "ok":
        time.sleep(0.5)
        health = requests.get(app["url"] + "/healthz", timeout=10).json()
    assert health == {"status": "ok", "model_version": app["v1"]}, health


def test_reset_forgets_the_agent(app) -> None:
    _post(app, {"agent_id": "forget-me", "observation": [0.0] * 6})
    r = _post(app, {}, "/v1/agents/forget-me/reset")
    assert r.status_code == 200 and r.json() == {"agent_id": "forget-me", "reset": True}
    assert _post(app, {}, "/v1/agents/forget-me/reset").json()["reset"] is False


def test_reset_agent_starts_afresh_and_is_not_replayed(app) -> None:
    # The ingress keeps a copy of the records it writes; a reset must drop that copy as well.
    body = {"agent_id": "reset-copy", "observation": [0.3] * 6, "request_id": "r-1"}
    first = _post(app, body).json()
    assert _post(app, body).json()["replayed"]
    assert _post(app, {}, "/v1/agents/reset-copy/reset").json()["reset"] is True
    again = _post(app, body).json()
    assert not again["replayed"] and again["plan_id"] != first["plan_id"]


def test_shadow_is_compared_not_returned(app) -> None:
    rng = np.random.default_rng(2)
    action = None
    for t in range(4):
        r = _post(app, {"agent_id": "shadowed", "observation": _obs(rng), "reward": None if t == 0 else 0.0,
                        "prev_action": action})
        assert r.json()["model_version"] == app["v1"]
        action = r.json()["action"]
    time.sleep(0.5)
    models = requests.get(app["url"] + "/v1/models", headers=AUTH, timeout=30).json()
    assert models["shadow"]["model_version"] == app["v2"]
    comparison = models["comparison"]
    assert comparison["requests"] > 0 and comparison["mean_action_difference"] is not None
    assert comparison["mean_prediction_error"]["shadow"] is not None


def test_promotion_switches_the_served_version_under_load_without_errors(app) -> None:
    stop, codes, versions = threading.Event(), [], []

    def hammer(k: int) -> None:
        rng = np.random.default_rng(k)
        while not stop.is_set():
            r = _post(app, {"agent_id": f"load-{k}", "observation": _obs(rng)})
            codes.append(r.status_code)
            if r.status_code == 200:
                versions.append(r.json()["model_version"])

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    try:
        time.sleep(1.0)
        app["registry"].promote(app["v2"], "production")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not versions or versions[-1] != app["v2"]):
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert set(codes) == {200}, json.dumps(sorted(set(codes)))
    assert versions[0] == app["v1"] and versions[-1] == app["v2"]


def test_batching_is_set_through_user_config(app) -> None:
    # A redeploy from Python restarts the ingress; `serve deploy` of serving/serve_config.yaml changes
    # only the user_config and reconfigures the running replicas in place (Serve's lightweight update).
    app["registry"].promote(app["v1"], "shadow")  # the promotion test emptied the shadow stage
    deploy("production", registry_uri=str(app["registry"].uri), shadow="shadow", log_uri=str(app["logs"]),
           port=int(app["url"].rsplit(":", 1)[1]), token=TOKEN, state=STATE,
           service={"plan": {"horizon": 8, "samples": 16}},
           batching={"max_batch_size": 7, "batch_wait_timeout_s": 0.01})
    after = requests.get(app["url"] + "/v1/models", headers=AUTH, timeout=30).json()["batching"]
    assert after["max_batch_size"] == 7 and after["batch_wait_timeout_s"] == 0.01
    rng = np.random.default_rng(5)
    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda k: _post(app, {"agent_id": f"cap-{k}", "observation": _obs(rng)}).status_code,
                              range(20)))
    assert codes == [200] * 20
    largest = requests.get(app["url"] + "/v1/models", headers=AUTH, timeout=30).json()["batching"]["largest_batch"]
    assert 1 <= largest <= 7  # the cap holds for planner calls too


# -- why each action was taken (issue 15): the answer's decision, the shield, /v1/explain ------------
def test_an_answer_says_why_its_action_was_taken(app) -> None:
    planned = _post(app, {"agent_id": "why-planned", "observation": [0.1] * 6, "deadline_ms": 30_000}).json()
    assert (planned["decision"], planned["fallback_action_by"], planned["shielded_constraint"]) == \
        ("planned", None, None)
    assert planned["margin"] is None  # no constraints
    late = _post(app, {"agent_id": "why-late", "observation": [0.1] * 6, "deadline_ms": 0.01}).json()
    assert (late["decision"], late["fallback_reason"], late["fallback_action_by"]) == ("fallback", "deadline", "zero")


SPEEDING = {"observation": [0.0, 0.0, 1.0, 0.0, 5.0, 0.0], "objective": {"name": "goal", "max_speed": 1.0}}
"""Moving at the speed limit: every action but braking is predicted over it (the test model's worst member)."""


def test_an_action_predicted_to_break_a_constraint_is_shielded_and_explained(app) -> None:
    r = _post(app, {"agent_id": "speeding", **SPEEDING, "deadline_ms": 30_000, "explain": True})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["decision"], answer["shielded_constraint"]) == ("shielded", "speed"), answer
    # not accelerating on: braking, or holding the speed (which of the two wins depends on the test model)
    assert answer["action"][0] <= 0 and isinstance(answer["margin"], float)
    explanation = answer["explanation"]
    assert explanation["plan_id"] == answer["plan_id"] and explanation["served"]["decision"] == "shielded"
    assert explanation["chosen"]["margins"]["speed"] < 0 and explanation["chosen"]["shield_passes"] is False


def test_explain_shows_the_chosen_plan_and_its_counterfactuals_with_trajectories(app) -> None:
    served = _post(app, {"agent_id": "explained", "observation": [0.1] * 6,
                         "objective": {"name": "goal", "no_fly_zones": [[3, 3, 0.5]]}}).json()
    r = _post(app, {"agent_id": "explained", "proposals": [[0.5, 0.5], [-1, 0]]}, "/v1/explain")
    assert r.status_code == 200, r.text
    body = r.json()  # the agent's current state: its last observation and objective
    assert body["agent_id"] == "explained" and body["plan_id"] is None
    assert body["model_version"] == served["model_version"]
    options = [body["chosen"], *body["alternatives"], body["fallback"], *body["proposals"]]
    assert len(body["alternatives"]) == 3 and len(body["proposals"]) == 2
    for option in options:  # (H+1) x S predicted states, H actions, a return, margins per constraint kind
        assert len(option["trajectory"]) == 9 and len(option["trajectory"][0]) == 6 and len(option["actions"]) == 8
        assert isinstance(option["expected_return"], float) and option["margins"]["no_fly_zone"] is not None
    assert body["proposals"][1]["actions"][0] == [-1, 0]
    by_id = _post(app, {"agent_id": "explained", "plan_id": served["plan_id"]}, "/v1/explain").json()
    assert by_id["plan_id"] == served["plan_id"] and by_id["served"]["action"] == served["action"]
    assert by_id["chosen"]["trajectory"][0] == pytest.approx([0.1] * 6)  # from the decision's own observation
    for body, status in (({"agent_id": "explained", "plan_id": "0" * 32}, 404),
                         ({"agent_id": "nobody-here"}, 404),
                         ({"agent_id": "explained", "proposals": [[0.1, 0.2, 0.3]]}, 422)):
        r = _post(app, body, "/v1/explain")
        assert r.status_code == status and set(r.json()) <= {"error", "detail"} and "\n" not in r.json()["error"]
