"""`wm policy train` on a tiny Nav2D model: one JSON object, a learning curve, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cluster.cli import main
from planners.policy_artifact import load_policy
from tests.cli.helpers import run_json
from tests.ray_fixtures import ray_local  # noqa: F401
from tests.warehouse_fixtures import warehouse_models  # noqa: F401
from worldmodel.artifact import load_model, save_model
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.data import write_transitions
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.collect import collect
from worldmodel.registry import ModelRegistry
from worldmodel.training import train_world_model

TINY = ("--iterations", "1", "--num-envs", "32", "--eval-episodes", "4")


@pytest.fixture(scope="module")
def nav(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("nav")
    data = collect("Nav2D-v0", episodes=5, seed=1)
    write_transitions(str(root / "logs"), data, "Nav2D-v0")
    model = train_world_model(data, space_spec(make_env("Nav2D-v0"), "Nav2D-v0"),
                              ModelConfig(ensemble_size=2, hidden=16, layers=1, reward_hidden=16, reward_layers=1),
                              TrainConfig(epochs=2, patience=2))
    registry = ModelRegistry(str(root / "registry"))
    registry.register(model)
    save_model(model, root / "model")
    return {"logs": str(root / "logs"), "model": str(root / "model"), "registry": str(root / "registry")}


def test_policy_train_prints_one_json_object_and_a_curve(ray_local, nav, tmp_path,  # noqa: F811
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "curve.png"
    code, out, err = run_json(capsys, "policy", "train", "--model", "latest", "--registry", nav["registry"],
                              "--data", nav["logs"], "--png", str(png), *TINY)
    assert code == 0, err
    assert out["command"] == "policy train" and out["version"] == "1.0.0" and out["env_id"] == "Nav2D-v0"
    assert len(out["curve"]) == 1 and out["real"]["episodes"] == 4 and out["settings"]["num_envs"] == 32
    assert Path(out["png"]) == png and png.stat().st_size > 0
    assert "policy: iteration 1" in err  # progress on stderr
    assert load_policy(ModelRegistry(nav["registry"]).model_dir("latest")) is not None


def test_policy_train_writes_the_curve_beside_the_policy_by_default(ray_local, nav, tmp_path,  # noqa: F811
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["policy", "train", "--model", nav["model"], "--data", nav["logs"], "--quiet", *TINY])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "wrote policy 1.0.0" in out and "real env: 4 episodes" in out
    assert (Path(nav["model"]) / "policy" / "learning_curve.png").is_file()
    assert "policy: iteration" not in err


@pytest.mark.parametrize("args, message", [
    (["--model", "/no/such/model", "--data", "LOGS"], "wm: error: --model /no/such/model: no such model directory"),
    (["--model", "9.9.9", "--registry", "REGISTRY", "--data", "LOGS"], "9.9.9"),
    (["--model", "MODEL", "--data", "/no/logs"], "wm: error: no trajectory logs under '/no/logs'"),
    (["--model", "MODEL", "--data", "PENDULUM"], "logs under"),
    (["--model", "MODEL", "--data", "LOGS", "--iterations", "0"], "iterations must be an int >= 1, got 0"),
])
def test_bad_input_is_a_one_line_error(nav, tmp_path, capsys, args: list[str], message: str) -> None:
    pendulum = str(tmp_path / "pendulum")
    write_transitions(pendulum, collect("Pendulum-v1", episodes=1, seed=0), "Pendulum-v1")
    names = {"LOGS": nav["logs"], "MODEL": nav["model"], "REGISTRY": nav["registry"], "PENDULUM": pendulum}
    code, out, err = run_json(capsys, "policy", "train", *[names.get(a, a) for a in args])
    assert code == 1 and message in out["error"], out
    assert len(err.strip().splitlines()) == 1  # one line, no traceback


def test_policy_train_on_a_fleet_model_trains_robots_of_floors(ray_local, warehouse_models,  # noqa: F811
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """One PPO iteration in the tiny warehouse fleet model: one floor of the logs' 4 robots, scored on a real floor."""
    fleet = warehouse_models["fleet"]
    logs = str(Path(fleet).parent / "logs")
    code, out, err = run_json(capsys, "policy", "train", "--model", fleet, "--data", logs, *TINY[:2],
                              "--num-envs", "1", "--eval-episodes", "4")
    assert code == 0, err
    assert out["env_id"] == "Warehouse-v1" and out["settings"]["num_envs"] == 1 and len(out["curve"]) == 1
    assert out["curve"][0]["env_steps"] == 4 * out["settings"]["steps_per_env"]  # one floor of 4 robots
    assert out["imagined"]["episodes"] == 4 and out["real"]["episodes"] == 4  # robots
    policy = load_policy(fleet)
    assert policy is not None and not policy.zones
    assert policy.act(torch.zeros(7, 28)).shape == (7, 2)  # the fallback's API: (N, S) -> (N, A)


def test_policy_tune_tries_every_combination_and_saves_the_best(ray_local, nav, tmp_path,  # noqa: F811
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"
    save_model(load_model(nav["model"]), model)
    code, out, err = run_json(capsys, "policy", "tune", "--model", str(model), "--data", nav["logs"],
                              "--space", "lr=1e-3,3e-3", "--space", "hidden=16", "--out", str(tmp_path / "runs"),
                              "--iterations", "1", "--eval-episodes", "4")
    assert code == 0, err
    assert out["command"] == "policy tune" and len(out["trials"]) == 2
    assert sorted(t["settings"]["lr"] for t in out["trials"]) == [1e-3, 3e-3]
    assert out["best"]["score"] == max(t["score"] for t in out["trials"])
    assert "policy sweep: trial 2/2" in err  # progress on stderr
    saved = load_policy(model)
    assert saved is not None and out["policy"]["version"] == "1.0.0" and out["policy"]["settings"]["hidden"] == 16
    assert out["policy"]["settings"]["lr"] == out["best"]["settings"]["lr"]


def test_policy_tune_refuses_a_setting_it_does_not_know_before_ray_starts(nav, capsys) -> None:
    code = main(["policy", "tune", "--model", nav["model"], "--data", nav["logs"], "--space", "widht=8,16"])
    out, err = capsys.readouterr()
    assert code != 0 and "widht" in err and len(err.strip().splitlines()) == 1
