"""`wm train` on image logs: the latent model, written as a latent artifact that loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.cli import main
from worldmodel.latent_artifact import is_latent_model, load_latent_model

from .helpers import run_json

TINY = json.dumps({"keypoints": 2, "latent": 8, "simnorm_group": 4, "members": 2, "hidden": 16, "depth": 4})


@pytest.fixture(scope="module")
def image_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    logs = tmp_path_factory.mktemp("camera") / "logs"
    assert main(["collect", "--env", "PixelNav2D-v0", "--episodes", "3", "--out", str(logs), "--json"]) == 0
    return logs


def test_train_on_image_logs_writes_a_loadable_latent_artifact(capsys: pytest.CaptureFixture[str],
                                                                image_logs: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    code, result, _ = run_json(capsys, "train", "--data", str(image_logs), "--out", str(out), "--latent-config",
                               TINY, "--latent-steps", "3", "--version", "0.2.0")
    assert code == 0 and result["kind"] == "latent" and result["env"] == "PixelNav2D-v0"
    metrics = result["metrics"]
    assert metrics["steps"] == 3 and metrics["episodes"] == 2 and metrics["held_out_episodes"] == 1
    assert set(metrics["held_out"]) == {"consistency", "reward", "breach"} and result["seconds"] > 0
    assert is_latent_model(out)
    loaded = load_latent_model(out)
    assert loaded.version == "0.2.0" and loaded.cfg.image_shape == (64, 64, 3) and loaded.cfg.members == 2
    assert loaded.data_fingerprint == result["data_fingerprint"].strip() and loaded.metrics == metrics


@pytest.mark.parametrize("args, message", [
    (["--latent-config", "[1]"], "--latent-config must be a JSON object"),
    (["--latent-config", '{"members": 0}'], "members must be >= 1, got 0"),
    (["--latent-config", '{"colour": 1}'], "unknown field(s) colour"),
])
def test_latent_option_errors_are_one_line(capsys: pytest.CaptureFixture[str], image_logs: Path, tmp_path: Path,
                                           args: list[str], message: str) -> None:
    assert main(["train", "--data", str(image_logs), "--out", str(tmp_path / "m"), *args]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_latent_options_are_refused_for_vector_logs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    assert main(["collect", "--env", "Nav2D-v0", "--episodes", "1", "--out", str(logs), "--json"]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(logs), "--out", str(tmp_path / "m"), "--latent-steps", "3"]) != 0
    err = capsys.readouterr().err
    assert "--latent-steps is for image logs only" in err and "Traceback" not in err
