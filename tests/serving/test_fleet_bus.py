"""The simulated fleet through the fleet bus, against a real Redis and the stream clients' test peer: each agent
reports the same steps, and the run counts the same errors, as over HTTP (``test_fleet_steps``)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from serving.bus import StreamReply
from serving.fleet import drive_fleet
from serving.fleet_config import FleetConfig
from serving.schema import PlanRequest
from tests.redis_fixtures import redis_client, redis_server  # noqa: F401
from tests.serving.test_fleet_steps import ACTION, STEPS, TOY, check_steps
from tests.serving.test_stream_client import Answer, StreamPeer, url  # noqa: F401


def _answer(failing: dict[int, int]) -> Answer:
    """The toy's server: request n (over all agents) fails with ``failing[n]``; request 2 is a fallback."""
    count = itertools.count(1)

    def answer(_: int, request: PlanRequest) -> list[StreamReply]:
        n, rid = next(count), str(request.request_id)
        if n in failing:
            return [StreamReply(rid, failing[n], {"error": "planning failed"})]
        return [StreamReply(rid, 200, {"action": ACTION, "model_version": "toy", "plan_id": f"p{n}",
                                       "disagreement": 0.0, "fallback": n == 2,
                                       "fallback_reason": "deadline" if n == 2 else None, "replayed": False})]
    return answer


def _bus(url: str, **settings: Any) -> FleetConfig:  # noqa: F811
    return FleetConfig(transport="redis", redis_url=url, env_id=TOY, **settings)


def test_over_the_bus_an_agent_reports_what_it_executed_as_over_http(url) -> None:  # noqa: F811
    failing = {3: 503, 4: 500, 8: 503}
    with StreamPeer(url, _answer(failing)) as peer:
        result = asyncio.run(drive_fleet(_bus(url, agents=1, hz=100.0, seconds=0.5, retries=0)))
    check_steps(peer.bodies, failing, result)
    assert result.retries == 0


def test_many_agents_drive_through_one_stream_client(url) -> None:  # noqa: F811
    with StreamPeer(url, _answer({})) as peer:
        result = asyncio.run(drive_fleet(_bus(url, agents=8, hz=20.0, seconds=0.5, drain=False)))
    assert result.errors == 0 and result.rate_per_agent_hz > 10 and result.episodes >= 8
    by_agent: dict[str, list[int]] = {}
    for body in peer.bodies:
        by_agent.setdefault(body["agent_id"], []).append(body["t"])
    assert len(by_agent) == 8
    assert all(ts[:STEPS + 2] == [0, 1, 2, 3, 4, 0] for ts in by_agent.values())
