"""`wm models list|show|promote|rollback`: one JSON object, one-line errors, exit 1 on a refused promotion."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.cli import main
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.envs import SpaceSpec
from worldmodel.model import WorldModel, build_dynamics, build_reward
from worldmodel.registry import ModelRegistry

from .helpers import run_json

SPEC = SpaceSpec(obs_dim=6, act_dim=2, act_low=(-1.0, -1.0), act_high=(1.0, 1.0), env_id="Nav2D-v0")
CFG = ModelConfig(ensemble_size=2, hidden=8, layers=1, reward_hidden=8, reward_layers=1)


def untrained() -> WorldModel:
    return WorldModel(SPEC, CFG, TrainConfig(), build_dynamics(SPEC, CFG), build_reward(SPEC, CFG), None)


@pytest.fixture
def registry(tmp_path: Path) -> str:
    """1.0.0 in production, 1.1.0 better than it, 1.2.0 worse."""
    reg = ModelRegistry(str(tmp_path / "reg"))
    reg.register(untrained(), stage="production")
    for score, better in ((0.2, True), (0.9, False)):
        reg.register(untrained(), parent="1.0.0", holdout={"candidate": {"score": score},
                                                           "production": {"score": 0.5},
                                                           "production_version": "1.0.0", "better": better})
    return str(tmp_path / "reg")


def test_list_and_show(capsys: pytest.CaptureFixture[str], registry: str) -> None:
    code, out, _ = run_json(capsys, "models", "list", "--registry", registry)
    assert code == 0 and out["command"] == "models list"
    rows = {r["version"]: r for r in out["versions"]}
    assert list(rows) == ["1.0.0", "1.1.0", "1.2.0"]
    assert rows["1.0.0"]["stage"] == "production" and rows["1.0.0"]["holdout_score"] is None
    assert rows["1.1.0"]["parent"] == "1.0.0" and rows["1.1.0"]["holdout_score"] == 0.2
    code, out, _ = run_json(capsys, "models", "show", "production", "--registry", registry)
    assert code == 0 and out["version"] == "1.0.0" and out["holdout"] is None and "created" in out
    code, out, _ = run_json(capsys, "models", "show", "1.2.0", "--registry", registry)
    assert code == 0 and out["holdout"]["better"] is False and out["stage"] == "candidate"
    # Human-readable output too.
    assert main(["models", "list", "--registry", registry]) == 0
    assert "3 version(s)" in capsys.readouterr().out


def test_promote_refuse_force_and_rollback(capsys: pytest.CaptureFixture[str], registry: str) -> None:
    code, out, err = run_json(capsys, "models", "promote", "1.2.0", "--registry", registry)
    assert code == 1 and out["ok"] is False and "refusing to promote 1.2.0" in out["error"]
    assert "1.0.0" in out["error"] and len(err.strip().splitlines()) == 1
    code, out, _ = run_json(capsys, "models", "promote", "1.1.0", "--stage", "shadow", "--registry", registry)
    assert code == 0 and (out["version"], out["stage"]) == ("1.1.0", "shadow")
    code, out, _ = run_json(capsys, "models", "promote", "1.2.0", "--force", "--registry", registry)
    assert code == 0 and (out["version"], out["stage"], out["forced"]) == ("1.2.0", "production", True)
    code, out, _ = run_json(capsys, "models", "rollback", "--registry", registry)
    assert code == 0 and (out["version"], out["archived"]) == ("1.0.0", "1.2.0")
    code, out, _ = run_json(capsys, "models", "list", "--registry", registry)
    assert [r["stage"] for r in out["versions"]] == ["production", "shadow", "archived"]
    code, out, _ = run_json(capsys, "models", "rollback", "--registry", registry)
    assert code == 1 and "nothing to roll back to" in out["error"]


@pytest.mark.parametrize("args, code, message", [
    (["models", "show", "7.0.0"], 1, "known versions: 1.0.0, 1.1.0, 1.2.0"),
    (["models", "promote", "1.1.0", "--stage", "archived"], 2, "invalid choice"),
    (["models", "frobnicate"], 2, "invalid choice"),
    (["models", "list"], 2, "--registry"),
])
def test_bad_input_is_one_line_error(capsys: pytest.CaptureFixture[str], registry: str, args: list[str],
                                     code: int, message: str) -> None:
    extra = [] if args == ["models", "list"] else ["--registry", registry]
    got, out, err = run_json(capsys, *args, *extra)
    assert got == code and message in out["error"] and len(err.strip().splitlines()) == 1
