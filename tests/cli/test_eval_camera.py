"""`wm eval` on a camera (latent) model: PixelNav2D agents in closed loop from pixels, and the options it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from planners.latent_eval import LatentEvalConfig

from .helpers import run_json, tiny_latent_dir


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return tiny_latent_dir(tmp_path)


def test_agents_run_every_episode_at_the_models_image_size(capsys: pytest.CaptureFixture[str], model_dir: Path) -> None:
    code, out, _ = run_json(capsys, "eval", "--model", str(model_dir), "--agents", "3", "--episodes", "4",
                            "--horizon", "3", "--samples", "4", "--no-fly-zones", "0", "--seed", "5")
    assert code == 0, out
    assert (out["kind"], out["env"], out["episodes"], out["agents"]) == ("latent", "PixelNav2D-v0", 4, 3)
    assert out["env_options"] == {"image_size": 32, "num_no_fly_zones": 0} and out["zone_steps"] == 0
    assert (out["settings"]["horizon"], out["settings"]["samples"]) == (3, 4)
    assert out["first_episode_seed"] == LatentEvalConfig.seed + 5 and 0 <= out["success_rate"] <= 1
    assert 1 <= out["mean_steps"] <= LatentEvalConfig.steps and out["ms_per_step"] > 0


@pytest.mark.parametrize("flags, named", [(["--mode", "policy"], "--mode"), (["--planner", "mppi"], "--planner"),
                                          (["--env", "Nav2D-v0"], "--env"),
                                          (["--robots", "5"], "--robots"), (["--episodes", "0"], "--episodes"),
                                          (["--breach-weight", "-1"], "--breach-weight")])
def test_options_a_camera_model_does_not_take_are_refused_by_name(capsys: pytest.CaptureFixture[str], model_dir: Path,
                                                                  flags: list[str], named: str) -> None:
    code, out, _ = run_json(capsys, "eval", "--model", str(model_dir), *flags)
    assert code != 0 and named in out["error"]


def test_a_breach_weight_is_refused_for_a_vector_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run_json(capsys, "eval", "--model", str(tmp_path), "--breach-weight", "5")
    assert code != 0 and "--breach-weight" in out["error"] and "camera" in out["error"]
