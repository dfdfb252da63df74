"""Latent model artifacts: round trip, checksums, and the vector loader telling them apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from worldmodel.artifact import ArtifactError, load_model
from worldmodel.checksums import sha256_file
from worldmodel.latent import LatentConfig, LatentWorldModel
from worldmodel.latent_artifact import LatentArtifact, is_latent_model, load_latent_model, save_latent_model

TINY = LatentConfig(image_shape=(32, 32, 3), latent=8, simnorm_group=4, members=3, hidden=16, depth=4)


def tiny_artifact(seed: int = 0) -> LatentArtifact:
    torch.manual_seed(seed)
    model = LatentWorldModel(TINY).eval()
    model.step_std.fill_(0.5)  # a buffer, saved with the weights
    return LatentArtifact(model, version="1.2.3", env_id="PixelNav2D-v0", data_fingerprint="abc",
                          train={"steps": 7}, metrics={"held_out": {"reward": 0.5}})


def test_round_trip_keeps_weights_spaces_and_provenance(tmp_path: Path) -> None:
    art = tiny_artifact()
    out = save_latent_model(art, tmp_path / "m")
    loaded = load_latent_model(out)
    stacks = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, TINY.frames, 32, 32, 3), np.uint8))
    with torch.no_grad():
        assert torch.equal(loaded.model.encode(stacks), art.model.encode(stacks))
    assert loaded.cfg == TINY and not loaded.model.training
    assert (loaded.version, loaded.env_id, loaded.data_fingerprint) == ("1.2.3", "PixelNav2D-v0", "abc")
    assert loaded.train == {"steps": 7} and loaded.metrics == {"held_out": {"reward": 0.5}}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spaces"] == {"image_shape": [32, 32, 3], "frames": TINY.frames, "act_dim": 2,
                                  "env_id": "PixelNav2D-v0"}
    assert set(manifest["files"]) == {"latent.pt", "config.json", "metrics.json"}
    assert is_latent_model(out) and not is_latent_model(tmp_path)
    assert not list(tmp_path.glob(".m.*"))  # no temp directory left behind


def test_checksum_mismatch_names_the_file(tmp_path: Path) -> None:
    out = save_latent_model(tiny_artifact(), tmp_path / "m")
    weights = out / "latent.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="latent.pt: checksum mismatch"):
        load_latent_model(out)


def test_overwrite_is_refused_unless_asked(tmp_path: Path) -> None:
    save_latent_model(tiny_artifact(), tmp_path / "m")
    with pytest.raises(FileExistsError, match="already exists"):
        save_latent_model(tiny_artifact(), tmp_path / "m")
    save_latent_model(tiny_artifact(1), tmp_path / "m", overwrite=True)


def test_each_loader_names_the_other(tmp_path: Path) -> None:
    out = save_latent_model(tiny_artifact(), tmp_path / "m")
    with pytest.raises(ArtifactError, match="latent .camera. world model; load it with .*load_latent_model"):
        load_model(out)
    vector = tmp_path / "v"
    vector.mkdir()
    (vector / "manifest.json").write_text(json.dumps({"format": "fleetwm.worldmodel/1", "files": {}}))
    with pytest.raises(ArtifactError, match="format 'fleetwm.worldmodel/1', expected 'fleetwm.latentmodel/1'"):
        load_latent_model(vector)


def test_a_model_saved_before_zone_context_loads_with_the_maps_3x3_convolutions(tmp_path: Path) -> None:
    cfg = LatentConfig(image_shape=(32, 32, 3), frames=2, keypoints=2, latent=8, simnorm_group=4, members=2,
                       hidden=16, depth=4, zone_grid=4, zone_context=3)
    torch.manual_seed(0)
    path = save_latent_model(LatentArtifact(LatentWorldModel(cfg).eval()), tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    del config["model"]["zone_context"]
    (path / "config.json").write_text(json.dumps(config))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["config.json"] = sha256_file(path / "config.json")
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert load_latent_model(path).model.cfg.zone_context == 3
