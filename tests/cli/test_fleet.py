"""`wm fleet` against a real (tiny) fleet endpoint: one JSON report and a PNG."""

from __future__ import annotations

import pytest

from tests.cli.helpers import run_json
from tests.ray_fixtures import ray_local  # noqa: F401
from tests.serving.test_client import TOKEN, tiny_app  # noqa: F401

REPORT_KEYS = {"agents", "hz", "seconds", "requests", "rate_hz", "rate_per_agent_hz", "latency_ms", "late_ticks",
               "episodes", "success_rate", "violations", "episodes_with_violation", "fallbacks", "errors",
               "fallbacks_by_reason", "errors_by_kind", "retries", "model_versions", "url", "env", "objective",
               "no_fly_zones"}


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
