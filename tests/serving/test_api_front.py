"""The app's front door without Ray: the token is checked before any body is read, on every route
but /healthz (the docs included); every error body is one line under ``error``; cached values refresh
in the background."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

import serving.front as front
from serving.app import api  # the app with its routes: serving.app declares them on serving.front's api
from serving.front import Refreshed, Unavailable, _http_error, _one_line


class FakeIngress:
    """What the middleware asks the replica's ingress: is the request authorized, and the plan route's answer."""

    def __init__(self, token: str | None = "t0k") -> None:
        self.token, self.plans = token, []

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        return self.token is None or headers.get(b"authorization") == f"Bearer {self.token}".encode()

    async def plan_http(self, headers: dict[bytes, bytes], body: bytes) -> tuple[int, dict[str, Any]]:
        self.plans.append(body)
        return 200, {"action": [0.0], "fallback_reason": None}


@pytest.fixture
def ingress(monkeypatch: pytest.MonkeyPatch) -> FakeIngress:
    fake = FakeIngress()
    monkeypatch.setattr(front, "_replica", lambda: fake)
    return fake


def call(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
         root_path: str = "") -> tuple[int, dict[str, str], Any, bool]:
    """One request through the whole app (middleware included): status, headers, JSON body, and
    whether the app read the request body."""
    read = []

    async def receive() -> dict[str, Any]:
        read.append(True)
        return {"type": "http.request", "body": body, "more_body": False}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": root_path + path, "raw_path": (root_path + path).encode(), "root_path": root_path,
             "query_string": b"", "server": ("testserver", 80), "client": ("127.0.0.1", 1),
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    asyncio.run(api(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(data), bool(read)


AUTH = {"Authorization": "Bearer t0k"}


@pytest.mark.parametrize("method, path", [
    ("POST", "/v1/plan"), ("POST", "/v1/plan/batch"), ("GET", "/v1/models"), ("POST", "/v1/agents/a1/reset"),
    ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/nowhere"),
])
def test_every_route_but_the_health_probe_needs_the_token_before_its_body_is_read(ingress, method, path) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "t0k"}):
        status, head, body, read = call(method, path, b'{"agent_id": 5}', headers)
        assert (status, body) == (401, {"error": "missing or wrong bearer token (Authorization: Bearer <token>)"})
        assert head["www-authenticate"] == "Bearer" and not read and not ingress.plans


def test_the_token_gate_sees_the_path_under_the_apps_route_prefix(ingress) -> None:
    assert call("GET", "/nowhere", root_path="/fleet")[0] == 401
    assert call("GET", "/openapi.json", headers=AUTH, root_path="/fleet")[0] == 200


def test_with_the_token_the_plan_route_is_answered_by_the_ingress(ingress) -> None:
    status, _, body, _ = call("POST", "/v1/plan", b'{"x": 1}', AUTH)
    assert (status, body) == (200, {"action": [0.0], "fallback_reason": None})
    assert ingress.plans == [b'{"x": 1}']
    assert call("GET", "/openapi.json", headers=AUTH)[0] == 200


def test_without_a_configured_token_nothing_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(front, "_replica", lambda: FakeIngress(token=None))
    assert call("GET", "/openapi.json")[0] == 200


@pytest.mark.parametrize("method, path, status, error", [
    ("GET", "/v1/nothing-here", 404, "no route GET /v1/nothing-here"),
    ("GET", "/v1/plan/batch", 405, "GET is not allowed on /v1/plan/batch; allowed: POST"),
    ("DELETE", "/v1/models", 405, "DELETE is not allowed on /v1/models; allowed: GET"),
])
def test_starlettes_own_errors_have_an_error_line(ingress, method, path, status, error) -> None:
    got, _, body, _ = call(method, path, headers=AUTH)
    assert (got, body) == (status, {"error": error})


def test_a_400_has_an_error_line() -> None:
    request = Request({"type": "http", "method": "POST", "path": "/v1/plan/batch", "headers": [],
                       "query_string": b"", "server": ("testserver", 80), "scheme": "http", "root_path": ""})
    answer = asyncio.run(_http_error(request, StarletteHTTPException(400, "There was an error\nparsing the body")))
    assert answer.status_code == 400 and json.loads(answer.body) == {"error": "There was an error parsing the body"}


def test_a_validation_error_is_one_line_naming_the_field() -> None:
    assert _one_line([{"loc": ("body", "requests", 1, "observation"), "msg": "too short", "type": "x"}]) == \
        "requests.1.observation: too short"
    assert _one_line([{"loc": ("path", "agent_id"), "msg": "bad", "type": "x"}, {"loc": ("a",)}]) == \
        "agent_id: bad (and 1 more)"
    assert _one_line([{"loc": (), "msg": "Invalid JSON: EOF", "type": "json_invalid"}]) == \
        "body: not valid JSON (Invalid JSON: EOF)"


def test_a_refreshed_value_is_fetched_once_then_refreshed_in_the_background() -> None:
    calls = []

    async def fetch() -> int:
        calls.append(len(calls))
        if len(calls) == 3:
            raise RuntimeError("actor restarting")
        return len(calls)

    async def main() -> list[Any]:
        cached = Refreshed(fetch, max_age_s=0.05, what="a number")
        seen = [cached.peek(), await cached.get(), await cached.get()]  # nothing yet, then the one first fetch
        await asyncio.sleep(0.1)
        seen.append(cached.peek())  # stale: answered at once, one refresh started
        seen.append(cached.peek())
        await asyncio.sleep(0)
        seen.append(cached.peek())
        await asyncio.sleep(0.1)
        cached.peek()  # a failed refresh keeps the last value
        await asyncio.sleep(0)
        seen.append(cached.peek())
        return seen

    assert asyncio.run(main()) == [None, 1, 1, 1, 1, 2, 2]
    assert len(calls) == 3  # one fetch at a time, never one per look


def test_a_value_that_cannot_be_fetched_is_an_error_naming_it() -> None:
    async def fetch() -> int:
        raise ConnectionError("planner\nunreachable")

    async def main() -> None:
        await Refreshed(fetch, max_age_s=1.0, what="model spec").get()

    with pytest.raises(Unavailable, match="model spec not available: ConnectionError: planner unreachable"):
        asyncio.run(main())
