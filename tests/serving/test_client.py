"""The Python clients against the real fleet endpoint (one tiny app per module), and their retries on a stub.

The stub (a plain ``http.server`` in a thread) answers 503 first and then 200, so the tests can
see what a retry sends; the app checks round trips, errors, auth and idempotent retries.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import numpy as np
import pytest

from actors.ports import free_port
from actors.state import StateConfig
import serving.client
import serving.episodes
from serving.client import APIError, AsyncFleetClient, EpisodeSteps, FleetClient, TransportError
from serving.deploy import deploy, shutdown_app
from tests.ray_fixtures import ray_local  # noqa: F401
from tests.worldmodel.conftest import TINY_MODEL, TINY_TRAIN
from worldmodel.artifact import save_model
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.collect import collect
from worldmodel.training import train_world_model

TOKEN = "client-token"
STATE = StateConfig(shards=1, name="test-client-state")
OBS = np.array([0.5, -0.5, 0.0, 0.0, -1.0, 1.0], np.float32)


@pytest.fixture(scope="module")
def tiny_app(ray_local, tmp_path_factory) -> Iterator[str]:  # noqa: F811
    """A tiny Nav2D model served with a bearer token (TOKEN) on a free port; yields the base URL."""
    root = tmp_path_factory.mktemp("client")
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    model = train_world_model(collect("Nav2D-v0", episodes=6, seed=0), spec, TINY_MODEL, TINY_TRAIN)
    url = deploy(str(save_model(model, root / "model")), port=free_port(), token=TOKEN, state=STATE,
                 service={"plan": {"horizon": 6, "samples": 16}})
    yield url
    shutdown_app(STATE)


@pytest.mark.slow
def test_round_trips_plan_batch_reset_models_health(tiny_app) -> None:
    with FleetClient(tiny_app, token=TOKEN, timeout_s=10) as client:
        assert client.health()["status"] == "ok"
        answer = client.plan("c-1", OBS, objective={"name": "goal", "no_fly_zones": np.array([[0.0, 0.0, 0.3]])},
                             return_trajectory=True)
        assert len(answer["action"]) == 2 and len(answer["trajectory"]) == 7 and not answer["replayed"]
        step = client.plan("c-1", OBS.tolist(), reward=-1.5, terminated=True)
        assert step["plan_id"] != answer["plan_id"]
        batch = client.plan_batch([{"agent_id": f"c-b{i}", "observation": OBS * i} for i in range(3)])
        assert [len(b["action"]) for b in batch] == [2, 2, 2]
        assert client.reset("c-b1") == {"agent_id": "c-b1", "reset": True}
        assert client.models()["production"]["model_version"] == answer["model_version"]
        assert client.stats.retries == 0 and client.stats.calls == 6


@pytest.mark.slow
def test_retry_with_the_same_request_id_is_replayed(tiny_app) -> None:
    with FleetClient(tiny_app, token=TOKEN, timeout_s=10) as client:
        first = client.plan("c-replay", OBS, request_id="r-1")
        again = client.plan("c-replay", OBS, request_id="r-1")
    assert again["replayed"] and again["plan_id"] == first["plan_id"] and again["action"] == first["action"]


@pytest.mark.slow
def test_4xx_raises_the_servers_message_without_retrying(tiny_app) -> None:
    with FleetClient(tiny_app, token=TOKEN, timeout_s=10) as client:
        with pytest.raises(APIError) as err:
            client.plan("c-bad", [0.0] * 5)
        assert err.value.status == 422 and err.value.message.startswith("observation:")
        assert "expects 6" in err.value.message and err.value.kind == "http_422"
        assert client.stats.attempts == 1 and client.stats.failures == 1


@pytest.mark.slow
def test_token_is_sent_when_given_and_required(tiny_app) -> None:
    with pytest.raises(APIError) as err:
        FleetClient(tiny_app, timeout_s=10).models()
    assert err.value.status == 401 and "bearer token" in err.value.message
    assert FleetClient(tiny_app, token=TOKEN, timeout_s=10).models()["production"]["obs_dim"] == 6


@pytest.mark.slow
def test_async_client_round_trips_and_shares_one_pool(tiny_app) -> None:
    async def go() -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
        async with AsyncFleetClient(tiny_app, token=TOKEN, timeout_s=10, connections=8) as client:
            plans = await asyncio.gather(*(client.plan(f"a-{i}", OBS) for i in range(8)))
            batch = await client.plan_batch([{"agent_id": "a-0", "observation": OBS, "reward": -1.0}])
            with pytest.raises(APIError, match="objective.name"):
                await client.plan("a-bad", OBS, objective={"name": "nope"})
            return plans, await client.health(), batch

    plans, health, batch = asyncio.run(go())
    assert all(len(p["action"]) == 2 for p in plans) and health["model_version"] == plans[0]["model_version"]
    assert len(batch) == 1 and not batch[0]["replayed"]


@pytest.mark.slow
def test_why_an_action_round_trips_through_both_clients(tiny_app) -> None:
    with FleetClient(tiny_app, token=TOKEN, timeout_s=10) as client:
        answer = client.plan("c-why", OBS, objective={"name": "goal", "max_speed": 2.0}, explain=True)
        assert answer["explanation"]["plan_id"] == answer["plan_id"] and answer["decision"] in ("planned", "shielded")
        body = client.explain("c-why", answer["plan_id"], proposals=np.array([[0.1, 0.2]]))
        assert body["served"]["action"] == answer["action"] and len(body["proposals"]) == 1
        with pytest.raises(APIError) as err:
            client.explain("c-why", "0" * 32)
        assert err.value.status == 404 and client.stats.retries == 0

    async def go() -> dict[str, Any]:
        async with AsyncFleetClient(tiny_app, token=TOKEN, timeout_s=10) as client:
            return await client.explain("c-why", observation=OBS, objective={"name": "goal",
                                                                             "no_fly_zones": np.array([[1, 1, 0.5]])})

    given = asyncio.run(go())
    assert given["plan_id"] is None and given["chosen"]["trajectory"][0] == pytest.approx(OBS.tolist())


def test_closed_port_fails_after_the_retries_with_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = FleetClient(url, timeout_s=0.2, retries=2, backoff_s=0.01)
    with pytest.raises(TransportError, match=r"no answer after 3 attempts") as err:
        client.plan("x", OBS)
    assert err.value.kind == "connection" and url in str(err.value)
    assert (client.stats.attempts, client.stats.retries, client.stats.failures) == (3, 2, 1)

    async def go() -> AsyncFleetClient:
        async with AsyncFleetClient(url, timeout_s=0.2, retries=1, backoff_s=0.01) as aclient:
            with pytest.raises(TransportError, match="no answer after 2 attempts"):
                await aclient.health()
        return aclient

    assert asyncio.run(go()).stats.retries == 1


def _send_json(handler: BaseHTTPRequestHandler, status: int, answer: Any) -> None:
    data = json.dumps(answer).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class _FlakyHandler(BaseHTTPRequestHandler):
    """503 on every first attempt, then 200; remembers each body (and Authorization) it was sent."""

    seen: list[tuple[dict[str, Any], str | None]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((body, self.headers.get("Authorization")))
        status, answer = (503, {"error": "planning failed, retry"}) if len(self.seen) % 2 else \
            (200, {"action": [0.0, 0.0], "request_id": body["request_id"]})
        _send_json(self, status, answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[str]:
    _FlakyHandler.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_503_is_retried_with_the_same_request_id_and_token(flaky) -> None:
    client = FleetClient(flaky, token="t0k", backoff_s=0.01)
    answer = client.plan("agent-1", np.zeros(3), reward=-1.0)
    (first, auth1), (second, auth2) = _FlakyHandler.seen
    assert first == second and answer["request_id"] == first["request_id"] and len(first["request_id"]) == 32
    assert auth1 == auth2 == "Bearer t0k" and first["observation"] == [0.0, 0.0, 0.0] and first["reward"] == -1.0
    assert client.stats.retries == 1

    async def go() -> dict[str, Any]:
        async with AsyncFleetClient(flaky, backoff_s=0.01) as aclient:
            return await aclient.plan("agent-2", [1, 2, 3], request_id="mine")

    assert asyncio.run(go())["request_id"] == "mine"
    assert [b["request_id"] for b, _ in _FlakyHandler.seen[2:]] == ["mine", "mine"]
    assert _FlakyHandler.seen[2][1] is None  # no token given: no Authorization header


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="url must start with http"):
        FleetClient("localhost:8000")
    with pytest.raises(ValueError, match=r"observation must be one vector \(S,\), got shape \(2, 3\)"):
        FleetClient("http://127.0.0.1:1").plan("x", np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"requests\[0\].*unexpected keyword argument 'bogus'"):
        FleetClient("http://127.0.0.1:1").plan_batch([{"agent_id": "x", "observation": [0.0], "bogus": 1}])


class _ScriptedHandler(BaseHTTPRequestHandler):
    """Answers request n (1, 2, ...) with ``status[n]`` (200 when absent; 200 answers carry ``ACTION``) and
    remembers every body."""

    status: dict[int, int] = {}
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(body)
        status = self.status.get(len(self.seen), 200)
        answer = {"action": ACTION, "model_version": "v", "plan_id": f"p{len(self.seen)}", "disagreement": 0.0,
                  "fallback": False, "fallback_reason": None, "replayed": False} if status == 200 else \
            {"error": f"request_id {body['request_id']!r} was superseded" if status == 409 else "planning failed"}
        _send_json(self, status, answer)

    def log_message(self, *args: Any) -> None:
        pass


ACTION = [0.5, -0.25]


@pytest.fixture
def scripted() -> Iterator[str]:
    _ScriptedHandler.status, _ScriptedHandler.seen = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _steps(seen: list[dict[str, Any]]) -> list[tuple[int | None, list[float] | None]]:
    return [(body.get("t"), body.get("prev_action")) for body in seen]


def test_after_a_failed_plan_the_next_reports_the_executed_action_and_its_step(scripted) -> None:
    _ScriptedHandler.status = {2: 503}
    client = FleetClient(scripted, retries=0)
    client.plan("a1", OBS)
    with pytest.raises(APIError, match="HTTP 503"):
        client.plan("a1", OBS, reward=-1.0)
    with pytest.raises(ValueError, match=r"'a1': its previous plan request failed.*pass prev_action="):
        client.plan("a1", OBS, reward=-1.0)  # the client cannot know what the agent did: nothing is sent
    client.plan("a1", OBS, reward=-1.0, prev_action=np.zeros(2))  # what the agent did without an answer
    client.plan("a1", OBS, reward=-1.0, terminated=True)
    client.plan("a1", OBS)  # the next episode's first observation
    assert _steps(_ScriptedHandler.seen) == [(0, None), (1, ACTION), (2, [0.0, 0.0]), (3, ACTION), (0, None)]
    assert [b.get("terminated", False) for b in _ScriptedHandler.seen] == [False, False, False, True, False]
    assert len({b["request_id"] for b in _ScriptedHandler.seen}) == 5


def test_a_retry_resends_its_step_and_a_409_is_final(scripted) -> None:
    _ScriptedHandler.status = {3: 503, 5: 409}
    client = FleetClient(scripted, retries=0)
    client.plan("a2", OBS, request_id="r1")
    client.plan("a2", OBS, request_id="r2")
    with pytest.raises(APIError):
        client.plan("a2", OBS, request_id="r3")
    client.plan("a2", OBS, request_id="r3")  # the caller's own retry of the failed step: same t, same report
    with pytest.raises(APIError) as refused:
        FleetClient(scripted, retries=3, backoff_s=0.01).plan("a2", OBS, t=9, request_id="r1")
    assert refused.value.status == 409 and "'r1'" in refused.value.message
    assert _steps(_ScriptedHandler.seen) == [(0, None), (1, ACTION), (2, ACTION), (2, ACTION), (9, None)]
    assert len(_ScriptedHandler.seen) == 5  # the 409 was sent once, not retried


def test_async_client_reports_the_executed_action_after_a_failure(scripted) -> None:
    _ScriptedHandler.status = {2: 500}

    async def go() -> None:
        async with AsyncFleetClient(scripted, retries=0) as client:
            await client.plan("b1", OBS)
            with pytest.raises(APIError):
                await client.plan("b1", OBS)
            await client.plan("b1", OBS, prev_action=[0.1, 0.2])

    asyncio.run(go())
    assert _steps(_ScriptedHandler.seen) == [(0, None), (1, ACTION), (2, [0.1, 0.2])]


def test_batch_items_carry_each_agents_step() -> None:
    steps = EpisodeSteps()
    first = steps.batch([{"agent_id": "x", "observation": OBS}, {"agent_id": "y", "observation": OBS, "t": 4}])
    steps.settle(first, [{"action": [1.0, 0.0]}, {"action": [0.0, 1.0]}])
    second = steps.batch([{"agent_id": "y", "observation": OBS}, {"agent_id": "x", "observation": OBS}])
    assert [(b["t"], b.get("prev_action")) for b in first + second] == [(0, None), (4, None), (5, [0.0, 1.0]),
                                                                        (1, [1.0, 0.0])]
    steps.settle(second, None)
    steps.forget("x")  # reset on the server: x starts over, y must say what it did
    assert steps.body("x", OBS)["t"] == 0
    with pytest.raises(ValueError, match="'y'"):
        steps.body("y", OBS)


def test_bodies_and_episode_steps_live_in_episodes_and_the_client_reexports_them() -> None:
    assert serving.client.EpisodeSteps is serving.episodes.EpisodeSteps
    assert serving.client.plan_body is serving.episodes.plan_body  # what serving.fleet imports
    body = serving.episodes.plan_body("x", np.arange(3), t=2, prev_action=[1, 0], terminated=True)
    assert {k: v for k, v in body.items() if k != "request_id"} == {
        "agent_id": "x", "observation": [0.0, 1.0, 2.0], "t": 2, "prev_action": [1.0, 0.0], "terminated": True}


def test_the_stream_clients_are_reexported_and_load_only_when_asked_for() -> None:
    probe = ("import sys, serving.client as c; before = 'redis' in sys.modules; "
             "from serving.client import AsyncStreamClient, StreamClient; import serving.stream_client as s; "
             "print(before, StreamClient is s.StreamClient and AsyncStreamClient is s.AsyncStreamClient)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]  # an HTTP-only user does not load redis (nor pyarrow, with the codec)
