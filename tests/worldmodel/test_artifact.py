"""Artifact round trip and the errors a corrupted or mismatched artifact raises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from worldmodel.artifact import ArtifactError, load_model, save_model, verify
from worldmodel.model import WorldModel


def state(model: WorldModel) -> dict[str, torch.Tensor]:
    return {f"{stem}.{k}": v for stem, m in model.modules().items() for k, v in m.state_dict().items()}


def test_round_trip_is_exact(tiny_model: WorldModel, tmp_path: Path) -> None:
    tiny_model.version, tiny_model.data_fingerprint = "1.2.3", "sha256:abc"
    save_model(tiny_model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    a, b = state(tiny_model), state(loaded)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key].cpu(), b[key]), key
    assert (loaded.version, loaded.data_fingerprint) == ("1.2.3", "sha256:abc")
    assert loaded.spec == tiny_model.spec
    assert loaded.model_config == tiny_model.model_config
    assert loaded.train_config == tiny_model.train_config
    assert loaded.metrics == json.loads(json.dumps(tiny_model.metrics))
    obs, act = torch.randn(4, 6), torch.rand(4, 2) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.dynamics(obs, act).mean, tiny_model.dynamics(obs, act).mean,
                                   rtol=0, atol=0)


def test_save_refuses_to_overwrite_and_leaves_no_temp(tiny_model: WorldModel, tmp_path: Path) -> None:
    save_model(tiny_model, tmp_path / "m")
    with pytest.raises(FileExistsError, match="already exists"):
        save_model(tiny_model, tmp_path / "m")
    save_model(tiny_model, tmp_path / "m", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_bad_version_rejected(tiny_model: WorldModel, tmp_path: Path) -> None:
    tiny_model.version = "v1"
    with pytest.raises(ValueError, match="semantic version"):
        save_model(tiny_model, tmp_path / "m")
    tiny_model.version = "0.1.0"


def test_corrupted_weights_fail_with_the_file_named(tiny_model: WorldModel, tmp_path: Path) -> None:
    path = save_model(tiny_model, tmp_path / "m")
    data = bytearray((path / "dynamics.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "dynamics.pt").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"dynamics\.pt: checksum mismatch"):
        load_model(path)


def test_missing_file_and_missing_manifest(tiny_model: WorldModel, tmp_path: Path) -> None:
    path = save_model(tiny_model, tmp_path / "m")
    (path / "reward.pt").unlink()
    with pytest.raises(ArtifactError, match=r"reward\.pt: missing"):
        verify(path)
    (path / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="missing manifest.json"):
        load_model(path)
    with pytest.raises(ArtifactError, match="no such model directory"):
        load_model(tmp_path / "nowhere")


def test_config_that_does_not_fit_the_weights(tiny_model: WorldModel, tmp_path: Path) -> None:
    """A config edited consistently with the manifest still cannot load weights of another shape."""
    path = save_model(tiny_model, tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["model"]["hidden"] = 64
    (path / "config.json").write_text(json.dumps(config))
    manifest = json.loads((path / "manifest.json").read_text())
    import hashlib
    manifest["files"]["config.json"] = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"dynamics\.pt: weights do not match config\.json"):
        load_model(path)
