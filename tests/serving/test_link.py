"""The simulated fleet's ``AgentLink`` and the retry policy against scripted raw HTTP servers: keep-alive, retries,
errors by kind."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
from typing import Any, Awaitable, Callable

import pytest

from actors.ports import free_port
from cluster.cli import build_parser
from serving.client import AsyncFleetClient, FleetClient
from serving.fleet_config import FleetConfig
from serving.link import RETRY, AgentLink, APIError, RetryPolicy, RetrySettings, TransportError

Answer = Callable[[int, dict[str, Any], dict[str, str]], bytes | tuple[float, bytes] | None]
"""(request number, body, headers) -> the raw answer (or seconds to wait, then it), or None to never answer."""


def _http(status: int, payload: Any, *, version: str = "1.1", extra: str = "") -> bytes:
    data = json.dumps(payload).encode()
    return (f"HTTP/{version} {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"{extra}\r\n").encode() + data


def _serve(answer: Answer, go: Callable[[str, dict[str, Any]], Awaitable[Any]]) -> dict[str, Any]:
    """Run ``go(url, seen)`` against a server that answers each request with ``answer``."""
    seen: dict[str, Any] = {"connections": 0, "requests": []}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
                body = json.loads(await reader.readexactly(int(headers["content-length"])))
                seen["requests"].append((head[0], headers, body))
                raw = answer(len(seen["requests"]), body, headers)
                if raw is None:
                    await asyncio.sleep(3600)
                if isinstance(raw, tuple):
                    await asyncio.sleep(raw[0])
                    raw = raw[1]
                writer.write(raw)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            seen["result"] = await go(f"http://127.0.0.1:{port}/api", seen)

    asyncio.run(main())
    return seen


def _link(url: str, **kw: Any) -> AgentLink:
    settings = {"token": None, "timeout_s": 1.0, "retries": 2, "backoff_s": 0.01, "max_backoff_s": 0.05} | kw
    return AgentLink(RetryPolicy(url, **settings))


def test_requests_share_one_kept_alive_connection() -> None:
    async def go(url: str, seen: dict[str, Any]) -> list[Any]:
        link = _link(url, token="t0k")
        try:
            return [await link.post("/v1/plan", {"i": i}) for i in range(3)]
        finally:
            link.close()

    seen = _serve(lambda n, body, _: _http(200, {"echo": body["i"]}), go)
    assert seen["result"] == [{"echo": 0}, {"echo": 1}, {"echo": 2}] and seen["connections"] == 1
    line, headers, _ = seen["requests"][0]
    assert line == "POST /api/v1/plan HTTP/1.1" and headers["authorization"] == "Bearer t0k"
    assert headers["content-type"] == "application/json"


def test_a_closing_server_is_reconnected() -> None:
    async def go(url: str, seen: dict[str, Any]) -> list[Any]:
        link = _link(url)
        return [await link.post("/p", {"i": i}) for i in range(2)]

    seen = _serve(lambda n, body, _: _http(200, body, extra="Connection: close\r\n"), go)
    assert seen["result"] == [{"i": 0}, {"i": 1}] and seen["connections"] == 2


def test_5xx_is_retried_with_the_same_body_and_4xx_is_not() -> None:
    async def go(url: str, seen: dict[str, Any]) -> Any:
        link = _link(url)
        ok = await link.post("/p", {"request_id": "same"})
        with pytest.raises(APIError, match="observation: bad") as err:
            await link.post("/p", {"request_id": "bad"})
        return ok, err.value.status, link._p.stats

    def answer(n: int, body: dict[str, Any], _: dict[str, str]) -> bytes:
        if body["request_id"] == "bad":
            return _http(422, {"error": "observation: bad"})
        return _http(503, {"error": "retry"}) if n == 1 else _http(200, {"ok": True})

    seen = _serve(answer, go)
    ok, status, stats = seen["result"]
    assert ok == {"ok": True} and status == 422
    assert [body["request_id"] for _, _, body in seen["requests"]] == ["same", "same", "bad"]
    assert (stats.calls, stats.attempts, stats.retries, stats.failures) == (2, 3, 1, 1)


def test_no_answer_is_a_timeout_after_the_retries() -> None:
    async def go(url: str, seen: dict[str, Any]) -> TransportError:
        with pytest.raises(TransportError, match="no answer after 2 attempts") as err:
            await _link(url, timeout_s=0.2, retries=1).post("/p", {})
        return err.value

    seen = _serve(lambda *_: None, go)
    assert seen["result"].kind == "timeout" and len(seen["requests"]) == 2


def test_unreadable_answers_and_closed_ports_are_connection_errors() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"

    async def go(url: str, seen: dict[str, Any]) -> TransportError:
        with pytest.raises(TransportError, match="transfer-encoding chunked") as err:
            await _link(url, retries=0).post("/p", {})
        return err.value

    assert _serve(lambda *_: chunked, go)["result"].kind == "connection"

    async def closed() -> TransportError:
        with pytest.raises(TransportError) as err:
            await _link(f"http://127.0.0.1:{free_port()}", retries=1).post("/p", {})
        return err.value

    assert asyncio.run(closed()).kind == "connection"


def test_a_late_answer_is_never_read_as_the_next_ones() -> None:
    # The first request is cancelled before its (slow) answer; the second must get its own answer.
    async def go(url: str, seen: dict[str, Any]) -> Any:
        link = _link(url)
        first = asyncio.ensure_future(link.post("/p", {"i": 0}))
        await asyncio.sleep(0.05)
        first.cancel()
        return [await link.post("/p", {"i": i}) for i in (1, 2)]

    def answer(n: int, body: dict[str, Any], _: dict[str, str]) -> bytes | tuple[float, bytes]:
        return (0.2, _http(200, body)) if n == 1 else _http(200, body)  # the first answers after its caller gave up

    seen = _serve(answer, go)
    assert seen["result"] == [{"i": 1}, {"i": 2}]


def test_bytes_past_an_answer_and_non_json_bodies_are_not_taken_for_answers() -> None:
    async def go(url: str, seen: dict[str, Any]) -> Any:
        link = _link(url, retries=0)
        out = [await link.post("/p", {"i": 0}), await link.post("/p", {"i": 1})]
        with pytest.raises(TransportError, match="JSON") as err:
            await link.post("/p", {"i": "text"})
        return out, err.value.kind

    def answer(n: int, body: dict[str, Any], _: dict[str, str]) -> bytes:
        if body["i"] == "text":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        return _http(200, body) + (_http(200, "STALE") if n == 1 else b"")

    seen = _serve(answer, go)
    (first, second), kind = seen["result"]
    assert first == {"i": 0} and second == {"i": 1} and kind == "connection"
    assert seen["connections"] >= 2  # the connection with stray bytes was not reused


def test_a_409_is_final_and_not_retried() -> None:
    # The server refused a superseded request id: sending it again cannot change that.
    async def go(url: str, seen: dict[str, Any]) -> APIError:
        with pytest.raises(APIError, match="superseded") as err:
            await _link(url, retries=3).post("/p", {"request_id": "r3"})
        return err.value

    seen = _serve(lambda *_: _http(409, {"error": "request_id 'r3' was superseded by 'r4'"}), go)
    assert seen["result"].status == 409 and seen["result"].kind == "http_409" and len(seen["requests"]) == 1


def test_the_clients_the_fleet_and_wm_fleet_share_one_set_of_retry_defaults() -> None:
    expected = dataclasses.asdict(RETRY)
    for kind in (FleetClient, AsyncFleetClient, RetryPolicy):
        params = inspect.signature(kind).parameters
        assert {name: params[name].default for name in expected} == expected, kind.__name__
    assert RetryPolicy("http://127.0.0.1:1", None).settings == RETRY
    config = FleetConfig("http://127.0.0.1:1")
    args = build_parser(["fleet"]).parse_args(["fleet", "--url", "http://127.0.0.1:1"])
    assert (config.timeout_s, config.retries) == (args.timeout_s, args.retries) == (RETRY.timeout_s, RETRY.retries)


def test_retry_settings_are_checked_and_named() -> None:
    with pytest.raises(ValueError, match=r"max_backoff_s; got RetrySettings\(.*backoff_s=2.0, max_backoff_s=1.0"):
        RetryPolicy("http://127.0.0.1:1", None, backoff_s=2.0)
    with pytest.raises(ValueError, match="timeout_s=0"):
        RetrySettings(timeout_s=0)
