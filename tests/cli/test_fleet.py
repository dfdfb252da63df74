"""`wm fleet` against a real (tiny) fleet endpoint: one JSON report and a PNG; over the fleet bus against a real
Redis and the stream clients' test peer; its flags checked."""

from __future__ import annotations

import pytest

from serving.bus import StreamReply
from serving.schema import PlanRequest
from tests.cli.helpers import run_json
from tests.ray_fixtures import ray_local  # noqa: F401
from tests.redis_fixtures import redis_client, redis_server  # noqa: F401
from tests.serving.test_client import TOKEN, tiny_app  # noqa: F401
from tests.serving.test_fleet_steps import TOY
from tests.serving.test_stream_client import StreamPeer, url  # noqa: F401

REPORT_KEYS = {"agents", "hz", "seconds", "requests", "rate_hz", "rate_per_agent_hz", "latency_ms", "late_ticks",
               "episodes", "success_rate", "violations", "episodes_with_violation", "fallbacks", "errors",
               "fallbacks_by_reason", "errors_by_kind", "retries", "model_versions", "url", "env", "objective",
               "no_fly_zones", "transport", "redis"}


@pytest.mark.slow
def test_fleet_drives_closed_loop_and_reports(capsys, tiny_app, tmp_path) -> None:  # noqa: F811
    png = tmp_path / "fleet.png"
    code, out, err = run_json(capsys, "fleet", "--url", tiny_app, "--token", TOKEN, "--agents", "3", "--hz", "5",
                              "--seconds", "3", "--no-fly-zones", "2", "--objective", "goal", "--png", str(png))
    assert code == 0, err
    assert REPORT_KEYS <= set(out) and out["png"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["errors"] == 0 and out["errors_by_kind"] == {} and len(out["model_versions"]) == 1
    assert 30 <= out["requests"] <= 48  # 3 agents x 5 Hz x 3 s, staggered starts
    assert set(out["latency_ms"]) == {"p50", "p95", "p99", "mean", "max"}
    assert 0 < out["latency_ms"]["p50"] <= out["latency_ms"]["p99"] <= out["latency_ms"]["max"]
    assert "wm fleet: 3 agents at 5 Hz" in err


@pytest.mark.slow
def test_fleet_without_the_token_counts_401_errors(capsys, tiny_app) -> None:  # noqa: F811
    code, out, _ = run_json(capsys, "fleet", "--url", tiny_app, "--agents", "2", "--hz", "5", "--seconds", "1")
    assert code == 0 and out["errors"] == out["requests"] > 0 and set(out["errors_by_kind"]) == {"http_401"}
    assert out["retries"] == 0  # a 4xx is never retried


def test_fleet_rejects_bad_arguments(capsys) -> None:
    code, out, err = run_json(capsys, "fleet", "--url", "http://127.0.0.1:1", "--agents", "0")
    assert code == 1 and out["ok"] is False and "agents must be >= 1" in err


def _steady(_: int, request: PlanRequest) -> list[StreamReply]:
    return [StreamReply(str(request.request_id), 200, {"action": [0.1, 0.0], "model_version": "peer", "plan_id": "p",
                                                       "disagreement": 0.0, "fallback": False, "fallback_reason": None})]


def test_fleet_over_the_bus_reports_its_transport(capsys, url) -> None:  # noqa: F811
    with StreamPeer(url, _steady) as peer:
        code, out, err = run_json(capsys, "fleet", "--transport", "redis", "--redis", url, "--agents", "2",
                                  "--hz", "20", "--seconds", "0.5", "--env", TOY)  # 4-step episodes
    assert code == 0, err
    assert REPORT_KEYS <= set(out) and out["transport"] == "redis" and out["redis"] == url and out["url"] is None
    assert out["errors"] == 0 and out["model_versions"] == ["peer"] and out["requests"] >= 16
    assert len({b["agent_id"] for b in peer.bodies}) == 2 and f"through the bus at {url}" in err


@pytest.mark.parametrize(("flags", "message"), [
    ((), "url is required with transport 'http'"),
    (("--transport", "redis"), "redis_url is required with transport 'redis'"),
    (("--transport", "redis", "--redis", "http://127.0.0.1:1"), "redis_url must start with redis://"),
    (("--url", "http://127.0.0.1:1", "--redis", "redis://127.0.0.1:1/0"), "add --transport redis"),
])
def test_fleet_transport_flags_are_checked(capsys, flags, message) -> None:
    code, out, err = run_json(capsys, "fleet", *flags)
    assert code == 1 and out["ok"] is False and message in err
