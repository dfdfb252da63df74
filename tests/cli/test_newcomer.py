"""The newcomer's path with defaults only, at a tiny budget: `wm collect`, `wm train`, `wm eval --no-fly-zones`.

Each command runs with no planner or model flags, so what it reports is what the defaults are:
``PlanConfig()``, CEM's own config and ``ModelConfig()``, the settings the README's results use.
(`wm serve` and `wm fleet`, the serving half of the path, are tested with the serving code.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from planners import CEMConfig, PlanConfig
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
