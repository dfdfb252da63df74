"""The newcomer's path with defaults only, at a tiny budget: `wm collect`, `wm train`, `wm eval --no-fly-zones`.

Each command runs with no planner or model flags, so what it reports is what the defaults are:
``PlanConfig()``, CEM's own config and ``ModelConfig()``, the settings the README's results use.
The serving half of the path, `wm serve` and `wm fleet`, runs the same way in the second test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from actors.ports import free_ports
from planners import CEMConfig, PlanConfig
from serving.fleet_config import FleetConfig
from worldmodel.config import ModelConfig

from .helpers import run_json


def test_defaults_only_collect_train_eval(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    logs, model = str(tmp_path / "logs"), str(tmp_path / "model")
    code, collected, _ = run_json(capsys, "collect", "--env", "Nav2D-v0", "--episodes", "6", "--out", logs)
    assert code == 0 and collected["episodes"] == 6 and collected["transitions"] > 0

    # Only the epoch cap is lowered, to keep the test fast; the model's size is the default.
    code, trained, _ = run_json(capsys, "train", "--data", logs, "--out", model, "--epochs", "2")
    assert code == 0 and trained["env"] == "Nav2D-v0" and trained["metrics"]["dynamics"]["r2"]
    code, info, _ = run_json(capsys, "info", model)
    assert code == 0 and info["model_config"] == ModelConfig().to_dict()
    assert (info["model_config"]["ensemble_size"], info["model_config"]["hidden"]) == (5, 64)

    code, evaluated, _ = run_json(capsys, "eval", "--model", model, "--no-fly-zones", "--episodes", "2",
                                  "--agents", "2")
    assert code == 0 and evaluated["command"] == "eval" and evaluated["episodes"] == 2
    assert evaluated["no_fly_zones"] == 2 and evaluated["planner"] == "cem" and evaluated["objective"] == "learned"
    assert evaluated["settings"] == dataclasses.asdict(PlanConfig())
    assert evaluated["planner_settings"] == dataclasses.asdict(CEMConfig())
    for key in ("success_rate", "violations", "episodes_with_violation", "fallbacks", "mean_return",
                "plan_ms_mean", "plan_ms_p99", "plans_per_s", "steps"):
        assert key in evaluated, key
    assert 0 <= evaluated["success_rate"] <= 1 and evaluated["violations"] >= 0


@pytest.mark.slow
def test_defaults_only_serve_and_fleet(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`wm serve` with no planner, model or deadline flags, driven by `wm fleet` with its defaults
    but a tiny fleet: answers, zero errors, transitions logged (what the README's fleet table runs)."""
    from tests.cli.test_serve import STOP_BOUND_S, _wait_healthy

    logs, model, served = str(tmp_path / "logs"), str(tmp_path / "model"), tmp_path / "served"
    assert run_json(capsys, "collect", "--env", "Nav2D-v0", "--episodes", "6", "--out", logs)[0] == 0
    assert run_json(capsys, "train", "--data", logs, "--out", model, "--epochs", "2")[0] == 0
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "cluster", "serve", "--model", model, "--port", str(port),
                               "--log-dir", str(served), "--state-dir", str(tmp_path / "state"), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "RAY_AUTH_MODE": "disabled", "XDG_CACHE_HOME": str(tmp_path / "cache")})
    try:
        _wait_healthy({url: server})
        code, fleet, err = run_json(capsys, "fleet", "--url", url, "--agents", "3", "--hz", "5", "--seconds", "3")
        assert code == 0, err
        assert fleet["errors"] == 0 and fleet["requests"] > 0 and fleet["no_fly_zones"] == FleetConfig.no_fly_zones
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=STOP_BOUND_S + 60)
    assert server.returncode == 0, err[-3000:]
    stopped = json.loads(out.strip().splitlines()[-1])
    assert stopped["telemetry"]["written"] > 0 and not stopped["not_written"]
