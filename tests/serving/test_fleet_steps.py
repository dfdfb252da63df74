"""The simulated fleet against a scripted raw HTTP server: what each agent reports, step by step.

The server fails some requests; the fleet's agents must then act without an answer (a zero action)
and say so in their next request (``prev_action``), with the right step index ``t``, so that the
server logs what the agent did. A toy env with 4-step episodes shows episode ends.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from serving.fleet import drive_fleet
from serving.fleet_config import FleetConfig, FleetTrace
from tests.serving.test_link import _http, _serve

TOY = "FleetToy-v0"
STEPS = 4
ACTION = [0.5, -0.25]


class _Toy(gymnasium.Env):
    """Observation (3,): the step count and the last action; every step rewards 1; 4 steps an episode."""

    observation_space = spaces.Box(-10.0, 10.0, shape=(3,), dtype=np.float32)
    action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.n = 0
        return np.zeros(3, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.n += 1
        return np.array([self.n, *action], np.float32), 1.0, False, False, {}


if TOY not in gymnasium.registry:
    gymnasium.register(TOY, entry_point=_Toy, max_episode_steps=STEPS)


def _answer(failing: dict[int, int]) -> Any:
    def answer(n: int, body: dict[str, Any], _: dict[str, str]) -> bytes:
        if n in failing:
            return _http(failing[n], {"error": "planning failed"})
        return _http(200, {"action": ACTION, "model_version": "toy", "plan_id": f"p{n}", "disagreement": 0.0,
                           "fallback": n == 2, "fallback_reason": "deadline" if n == 2 else None, "replayed": False})
    return answer


def test_after_a_failed_request_an_agent_reports_the_action_it_executed_and_the_next_t() -> None:
    failing = {3: 503, 4: 500, 8: 503}

    async def go(url: str, seen: dict[str, Any]) -> Any:
        # One agent, no retries (one attempt per request), until at least two episodes ended.
        return await drive_fleet(FleetConfig(url, agents=1, hz=100.0, seconds=0.5, env_id=TOY, retries=0))

    seen = _serve(_answer(failing), go)
    check_steps([body for _, _, body in seen["requests"]], failing, seen["result"])


def check_steps(bodies: list[dict[str, Any]], failing: dict[int, int], result: Any) -> None:
    """What one toy agent with no retries sent (``bodies`` in order), when requests ``failing`` failed."""
    assert len(bodies) >= 2 * (STEPS + 1)
    for n, (before, body) in enumerate(zip(bodies, bodies[1:]), start=2):
        if before.get("truncated"):  # the final observation was reported: a new episode starts at 0
            assert body["t"] == 0 and "prev_action" not in body and "reward" not in body, n
            continue
        executed = [0.0, 0.0] if n - 1 in failing else ACTION  # a failed request: the agent took a zero action
        assert body["t"] == before["t"] + 1 and body["prev_action"] == executed and body["reward"] == 1.0, n
        assert body["observation"][1:] == executed  # the toy's observation shows what was really executed
    assert bodies[0]["t"] == 0 and [b["t"] for b in bodies[:STEPS + 2]] == [0, 1, 2, 3, 4, 0]
    assert len({b["request_id"] for b in bodies}) == len(bodies)
    assert result.errors == 3 and result.errors_by_kind == {"http_503": 2, "http_500": 1}
    assert result.fallbacks == 1 and result.fallbacks_by_reason == {"deadline": 1}
    assert result.episodes >= 2 and 0 < result.requests <= len(bodies)  # past the end, requests are untimed


def test_fleet_settings_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match=r"agents must be >= 1, got 0; hz must be > 0, got -1"):
        FleetConfig("http://127.0.0.1:1", agents=0, hz=-1)
    with pytest.raises(ValueError, match=r"objective must be one of learned, goal, got 'analytic'"):
        FleetConfig("http://127.0.0.1:1", objective="analytic")
    with pytest.raises(ValueError, match="no-fly zones exist in Nav2D-v0 only, not Pendulum-v1"):
        FleetConfig("http://127.0.0.1:1", env_id="Pendulum-v1", no_fly_zones=2)
    with pytest.raises(ValueError, match="url must start with http"):
        FleetConfig("127.0.0.1:8000")
    with pytest.raises(ValueError, match="url is required with transport 'http'"):
        FleetConfig()
    with pytest.raises(ValueError, match="transport must be one of http, redis, got 'grpc'"):
        FleetConfig("http://127.0.0.1:1", transport="grpc")
    with pytest.raises(ValueError, match="redis_url is required with transport 'redis'"):
        FleetConfig(transport="redis")
    with pytest.raises(ValueError, match="redis_url must start with redis://, rediss://, unix://, got 'http://h:1'"):
        FleetConfig(transport="redis", redis_url="http://h:1")
    assert FleetConfig(transport="redis", redis_url="redis://h:1/0").target == "the bus at redis://h:1/0"


def test_a_trace_keeps_nav2d_tracks_that_plot(tmp_path) -> None:
    from cluster.commands.fleet_report import plot_fleet

    trace = FleetTrace(track_agents=1)

    async def go(url: str, seen: dict[str, Any]) -> Any:
        config = FleetConfig(url, agents=2, hz=50.0, seconds=0.3, no_fly_zones=2, objective="goal", drain=False)
        return await drive_fleet(config, trace=trace)

    seen = _serve(_answer({}), go)
    (track,) = trace.tracks
    assert track.xy.shape[1] == 2 and track.goal.shape == (2,) and track.zones.shape == (2, 3)
    assert len(trace.latency_ms) == len(trace.sent_s) == seen["result"].requests > 0
    assert {tuple(b["objective"]) for _, _, b in seen["requests"]} == {("name", "no_fly_zones")}
    assert plot_fleet(trace, tmp_path / "f.png", "toy").read_bytes()[:4] == b"\x89PNG"
