"""Latent (camera) models in the registry: numbered, stored with checksums, told apart from vector models, and
loadable by the planner deployment from a registered version's directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from planners.latent_service import LatentPlanner
from planners.service import load_planner
from worldmodel.artifact import ArtifactError
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.envs import SpaceSpec
from worldmodel.latent import LatentConfig, LatentWorldModel
from worldmodel.latent_artifact import LatentArtifact, load_latent_model
from worldmodel.model import WorldModel, build_dynamics, build_reward
from worldmodel.registry import ModelRegistry, RegistryError
from worldmodel.registry_records import LATENT, VECTOR, VersionInfo

TINY = LatentConfig(image_shape=(32, 32, 3), latent=8, simnorm_group=4, members=2, hidden=16, depth=4)
SPEC = SpaceSpec(obs_dim=6, act_dim=2, act_low=(-1.0, -1.0), act_high=(1.0, 1.0), env_id="Nav2D-v0")
CFG = ModelConfig(ensemble_size=2, hidden=8, layers=1, reward_hidden=8, reward_layers=1)


def latent(seed: int = 0, cfg: LatentConfig = TINY) -> LatentArtifact:
    torch.manual_seed(seed)
    return LatentArtifact(LatentWorldModel(cfg).eval(), env_id="PixelNav2D-v0", data_fingerprint="sha256:logs",
                          metrics={"held_out": {"breach": 0.1}})


def vector() -> WorldModel:
    return WorldModel(SPEC, CFG, TrainConfig(), build_dynamics(SPEC, CFG), build_reward(SPEC, CFG), None)


def test_latent_versions_are_numbered_stored_and_loaded(tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path / "reg"))
    art = latent()
    first = registry.register(art, lineage={"source": "x"}, stage="production")
    assert (first.version, first.kind, first.stage, art.version) == ("1.0.0", LATENT, "production", "1.0.0")
    assert first.data_fingerprint == "sha256:logs" and first.metrics == {"held_out": {"breach": 0.1}}
    assert registry.register(latent(seed=1)).version == "1.1.0"  # same kind, spaces and config: MINOR
    bigger = LatentConfig(image_shape=(32, 32, 3), latent=16, simnorm_group=4, members=2, hidden=16, depth=4)
    assert registry.register(latent(cfg=bigger)).version == "2.0.0"
    assert registry.register(vector()).version == "3.0.0" and registry.get("3.0.0").kind == VECTOR
    loaded = registry.load_latent("production")
    assert loaded.version == "1.0.0" and loaded.cfg == TINY
    for name, tensor in art.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    with pytest.raises(RegistryError, match="3.0.0 .* is a vector model"):
        registry.load_latent("3.0.0")
    with pytest.raises(ArtifactError, match="load_latent_model"):
        registry.load("1.0.0")
    info = registry.get("1.0.0")
    assert VersionInfo(**info.to_dict()) == info


def test_records_from_before_kinds_read_as_vector(tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path / "reg"))
    registry.register(vector())
    index = registry.store.read()
    del index["versions"]["1.0.0"]["kind"]
    registry.store.write(index)
    assert registry.get("1.0.0").kind == VECTOR


def test_the_planner_deployment_loads_a_registered_latent_version(tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path / "reg"))
    registry.register(latent(), stage="production")
    planner = load_planner(registry.model_dir("production"))  # what EnsembleWorker._load does with a registry
    assert isinstance(planner, LatentPlanner) and planner.version == "1.0.0"


def test_a_remote_registry_downloads_and_verifies_latent_versions(tmp_path: Path) -> None:
    registry = ModelRegistry(f"file://{tmp_path / 'remote'}", cache_dir=str(tmp_path / "cache"))
    registry.register(latent())
    local = registry.model_dir("1.0.0")
    assert str(local).startswith(str(tmp_path / "cache")) and load_latent_model(local).version == "1.0.0"
