"""`wm reward train|register|list` and `wm serve --reward-model`: one JSON object, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.ports import free_port
from tests.serving.test_reward_model_serving import synthetic_logs
from worldmodel.artifact import save_model
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.data.writer import write_transitions
from worldmodel.envs import SpaceSpec
from worldmodel.model import WorldModel, build_dynamics, build_reward
from worldmodel.registry import ModelRegistry

from .helpers import run_json

NAV = SpaceSpec(obs_dim=6, act_dim=2, act_low=(-1.0, -1.0), act_high=(1.0, 1.0), env_id="Nav2D-v0")
CFG = ModelConfig(ensemble_size=2, hidden=8, layers=1, reward_hidden=32, reward_layers=2)
FIT = ("--epochs", "40", "--patience", "10", "--lr", "0.003", "--quiet")


def untrained(spec: SpaceSpec = NAV) -> WorldModel:
    return WorldModel(spec, CFG, TrainConfig(), build_dynamics(spec, CFG), build_reward(spec, CFG), None)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Nav2D-sized logs whose reward is the reached x position, and a registry holding an untrained Nav2D model."""
    root = tmp_path_factory.mktemp("reward-cli")
    logs, registry = root / "logs", root / "registry"
    write_transitions(str(logs), synthetic_logs(1.0), env_id="Nav2D-v0")
    ModelRegistry(str(registry)).register(untrained(), stage="production")
    other = save_model(untrained(SpaceSpec(4, 2, (-1.0, -1.0), (1.0, 1.0), "Other-v0")), root / "other")
    return {"logs": str(logs), "registry": str(registry), "other": str(other), "root": str(root)}


def test_train_registers_a_reward_fitted_on_the_logs_and_list_shows_it(capsys, made) -> None:
    code, out, _ = run_json(capsys, "reward", "train", "--data", made["logs"], "--model", "production",
                            "--registry", made["registry"], *FIT)
    assert code == 0, out
    assert (out["command"], out["version"], out["model_version"], out["env"]) == ("reward train", "r1.0.0", "1.0.0",
                                                                                 "Nav2D-v0")
    assert out["holdout"]["r2"] > 0.9 and out["holdout"]["rows"] > 0  # the known reward, on held-out episodes
    assert out["data_fingerprint"].startswith("sha256:") and out["metrics"]["reward"]["fit"]["epochs"] > 0
    code, out, _ = run_json(capsys, "reward", "list", "--registry", made["registry"])
    assert code == 0 and [r["version"] for r in out["versions"]] == ["r1.0.0"]
    row = out["versions"][0]
    assert (row["env_id"], row["obs_dim"], row["act_dim"], row["model_version"]) == ("Nav2D-v0", 6, 2, "1.0.0")


def test_a_reward_directory_is_registered_with_its_parent(capsys, made) -> None:
    out_dir = str(Path(made["root"]) / "reward-dir")
    model_dir = str(ModelRegistry(made["registry"]).model_dir("1.0.0"))
    code, out, _ = run_json(capsys, "reward", "train", "--data", made["logs"], "--model", model_dir, "--out", out_dir,
                            "--epochs", "2", "--quiet")
    assert code == 0 and out["reward_dir"] == out_dir and out["version"] == "r0.1.0"
    code, out, _ = run_json(capsys, "reward", "register", out_dir, "--registry", made["registry"],
                            "--parent", "r1.0.0")
    assert code == 0 and (out["version"], out["parent"]) == ("r1.1.0", "r1.0.0")


@pytest.mark.parametrize("args, error", [
    (("--model", "production"), "give --out DIR to write the reward model, or --registry URI"),
    (("--model", "OTHER", "--out", "x"), "are of Nav2D-v0; model 0.1.0 is of Other-v0"),
    (("--model", "9.9.9", "--registry", "REG"), "unknown version '9.9.9'"),
])
def test_train_errors_are_one_line(capsys, made, args, error) -> None:
    args = tuple(made["other"] if a == "OTHER" else made["registry"] if a == "REG" else a for a in args)
    code, out, err = run_json(capsys, "reward", "train", "--data", made["logs"], *args, "--quiet")
    assert code == 1 and error in out["error"] and len(err.strip().splitlines()) == 1


def test_serve_refuses_an_unknown_or_unfit_reward_model_before_starting(capsys, made) -> None:
    serve = ("serve", "--port", str(free_port()), "--no-state-dir", "--redis", "none")
    code, out, _ = run_json(capsys, *serve, "--registry", made["registry"], "--reward-model", "r9.0.0")
    assert code == 1 and "unknown reward model 'r9.0.0'" in out["error"]
    code, out, _ = run_json(capsys, *serve, "--model", made["other"], "--reward-model", "r1.0.0")
    assert code == 1 and "--reward-model needs --registry" in out["error"]
