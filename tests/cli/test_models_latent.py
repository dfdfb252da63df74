"""`wm models register` takes a latent (camera) model directory as it takes a vector one."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import run_json, tiny_latent_dir


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return tiny_latent_dir(tmp_path, version="0.3.0")


def test_register_list_show_and_refuse_twice(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             model_dir: Path) -> None:
    reg = str(tmp_path / "reg")
    code, out, _ = run_json(capsys, "models", "register", str(model_dir), "--registry", reg, "--stage", "production")
    assert code == 0 and (out["version"], out["kind"], out["stage"]) == ("1.0.0", "latent", "production")
    assert out["artifact_version"] == "0.3.0" and out["data_fingerprint"] == "sha256:logs"
    assert out["artifact_digest"].startswith("sha256:")
    code, out, _ = run_json(capsys, "models", "list", "--registry", reg)
    assert code == 0 and out["versions"][0]["kind"] == "latent"
    code, out, _ = run_json(capsys, "models", "show", "production", "--registry", reg)
    assert code == 0 and out["kind"] == "latent" and out["lineage"]["artifact_version"] == "0.3.0"
    code, out, err = run_json(capsys, "models", "register", str(model_dir), "--registry", reg)
    assert code != 0 and "already registered" in out["error"] and "1.0.0" in out["error"]


def test_a_corrupted_latent_directory_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                 model_dir: Path) -> None:
    (model_dir / "latent.pt").write_bytes(b"changed")
    code, out, _ = run_json(capsys, "models", "register", str(model_dir), "--registry", str(tmp_path / "reg"))
    assert code != 0 and "checksum mismatch" in out["error"]
