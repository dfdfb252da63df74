"""The fast route's plumbing without Ray: which paths it takes, and the body it hands on to FastAPI's route."""

from __future__ import annotations

import asyncio

from serving.app import _replay, _route_path


def test_the_route_path_drops_the_apps_root_path() -> None:
    assert _route_path({"path": "/v1/plan", "root_path": ""}) == "/v1/plan"
    assert _route_path({"path": "/fleet/v1/plan", "root_path": "/fleet"}) == "/v1/plan"  # route_prefix /fleet
    assert _route_path({"path": "/v1/plan"}) == "/v1/plan"


def test_a_replayed_body_comes_first_then_the_connection_speaks() -> None:
    async def connection() -> dict:
        return {"type": "http.disconnect"}

    async def main() -> list[dict]:
        receive = _replay(b'{"a": 1}', connection)
        return [await receive(), await receive()]

    first, second = asyncio.run(main())
    assert first == {"type": "http.request", "body": b'{"a": 1}', "more_body": False}
    assert second == {"type": "http.disconnect"}
