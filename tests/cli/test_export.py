"""`wm export`: a model directory or registered version to ONNX or TorchScript, one JSON object, one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from planners.policy_artifact import save_policy
from tests.thread_fixtures import one_thread  # noqa: F401  (autouse: one torch thread)
from tests.worldmodel.test_export import random_model, random_policy
from worldmodel.artifact import save_model
from worldmodel.export_manifest import read_export
from worldmodel.registry import ModelRegistry

from .helpers import run_json

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init Nav2D model with a policy saved beside it."""
    root = save_model(random_model(), tmp_path_factory.mktemp("export") / "model")
    save_policy(root, random_policy(), {"note": "random"})
    return root


def test_exports_a_model_directory_beside_it(capsys: pytest.CaptureFixture[str], model_dir: Path) -> None:
    code, out, _ = run_json(capsys, "export", str(model_dir))
    assert code == 0 and out["format"] == "onnx" and out["version"] == "1.2.3"
    assert Path(out["out"]) == model_dir / "export" / "onnx"
    assert set(out["graphs"]) == {"dynamics", "reward", "termination", "policy"}
    assert out["max_abs_diff"] <= out["tolerance"] == 1e-5
    assert set(read_export(out["out"], "onnx")["graphs"]) == set(out["graphs"])


def test_exports_a_registered_version_as_torchscript(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path / "reg"))
    version = registry.register(random_model()).version
    code, out, _ = run_json(capsys, "export", version, "--registry", str(tmp_path / "reg"), "--format", "torchscript",
                            "--out", str(tmp_path / "ts"))
    assert code == 0 and out["out"] == str(tmp_path / "ts") and out["graphs"]["dynamics"]["file"] == "dynamics.pt"
    assert "policy" not in out["graphs"]


def test_exports_a_latent_camera_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from tests.worldmodel.test_latent_artifact import tiny_artifact
    from worldmodel.latent_artifact import load_latent_model, save_latent_model

    root = save_latent_model(tiny_artifact(), tmp_path / "camera")
    code, out, _ = run_json(capsys, "export", str(root))
    assert code == 0 and set(out["graphs"]) == {"encoder", "dynamics", "heads"} and out["version"] == "1.2.3"
    assert load_latent_model(root).version == "1.2.3"  # the export beside it leaves the model's checksums whole


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str], model_dir: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run_json(capsys, "export", str(model_dir), "--format", "tflite")
    assert code == 2 and "invalid choice: 'tflite'" in out["error"] and len(err.strip().splitlines()) == 1
    code, out, _ = run_json(capsys, "export", "9.9.9", "--registry", str(tmp_path / "empty"))
    assert code == 1 and "9.9.9" in out["error"]
    code, out, _ = run_json(capsys, "export", "9.9.9")
    assert code == 1 and "not a model directory" in out["error"]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    code, out, err = run_json(capsys, "export", str(model_dir), "--out", str(tmp_path / "x"))
    assert code == 1 and "pip install 'fleetwm[export]'" in out["error"] and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
