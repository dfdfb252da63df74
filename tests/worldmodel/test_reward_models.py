"""Reward models on their own: fitting one on logs with a known reward, its artifact, its registry."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from worldmodel.artifact import ArtifactError
from worldmodel.config import TrainConfig
from worldmodel.data.batch import Transitions
from worldmodel.envs import make_env, space_spec
from worldmodel.registry_store import RegistryError
from worldmodel.reward_artifact import (RewardArtifact, RewardConfig, RewardMismatch, check_reward_version,
                                        load_reward, save_reward)
from worldmodel.reward_registry import RewardCache, RewardRegistry
from worldmodel.reward_training import train_reward_model

SMALL = RewardConfig(hidden=32, layers=2)
FAST = TrainConfig(epochs=60, batch_size=256, patience=10, lr=3e-3)


def linear_reward(data: Transitions, sign: float = 1.0) -> Transitions:
    """``data`` relabelled with a known reward: ``sign`` times the reached x position."""
    return dataclasses.replace(data, rewards=(sign * data.new_obs[:, 0]).astype(np.float32))


@pytest.fixture(scope="module")
def nav_spec():
    return space_spec(make_env("Nav2D-v0"), "Nav2D-v0")


@pytest.fixture(scope="module")
def fitted(nav_data: Transitions, nav_spec) -> RewardArtifact:
    torch.manual_seed(0)
    return train_reward_model(linear_reward(nav_data), nav_spec, SMALL, FAST)


def test_a_reward_fitted_alone_learns_a_known_linear_reward(fitted: RewardArtifact, nav_data: Transitions) -> None:
    test = fitted.metrics["reward"]
    assert test["r2_min"] > 0.95, test  # held-out episodes, not the rows it was fitted on
    spread = float(np.var(nav_data.new_obs[:, 0]))
    assert test["mse"][0] < 0.05 * spread
    assert fitted.metrics["data"]["test_rows"] > 0 and fitted.version == "r0.1.0"


def test_logs_of_other_sizes_are_refused(nav_data: Transitions, nav_spec) -> None:
    other = dataclasses.replace(nav_spec, obs_dim=4, env_id="Other-v0")
    with pytest.raises(ValueError, match=r"the logs have \(S, A\) = \(6, 2\).*Other-v0.*\(4, 2\)"):
        train_reward_model(nav_data, other, SMALL, FAST)


def test_the_artifact_round_trips_and_its_checksums_catch_a_change(fitted: RewardArtifact, tmp_path: Path) -> None:
    fitted = dataclasses.replace(fitted, model_version="1.0.0", data_uri="/logs/nav")
    out = save_reward(fitted, tmp_path / "reward")
    back = load_reward(out)
    obs, act, new = (torch.randn(16, n) for n in (6, 2, 6))
    with torch.no_grad():
        torch.testing.assert_close(back.reward(obs, act, new), fitted.reward(obs, act, new))
    assert (back.version, back.model_version, back.data_uri, back.spec) == ("r0.1.0", "1.0.0", "/logs/nav",
                                                                             fitted.spec)
    assert back.metrics == json.loads(json.dumps(fitted.metrics)) and back.config == SMALL
    with pytest.raises(FileExistsError, match="already exists"):
        save_reward(fitted, out)
    (out / "metrics.json").write_text("{}\n")
    with pytest.raises(ArtifactError, match="metrics.json: checksum mismatch"):
        load_reward(out)
    with pytest.raises(ArtifactError, match="not a reward model directory"):
        load_reward(tmp_path)


def test_a_reward_is_refused_for_a_world_model_whose_spaces_it_does_not_fit(fitted: RewardArtifact,
                                                                            nav_spec) -> None:
    fitted.check_fits(nav_spec)  # its own spaces: fine
    wider = dataclasses.replace(nav_spec, obs_dim=8)
    with pytest.raises(RewardMismatch, match=r"fits Nav2D-v0 with \(S, A\) = \(6, 2\); model 2.0.0 has "
                                              r"Nav2D-v0 with \(8, 2\)"):
        fitted.check_fits(wider, "model 2.0.0")


def test_reward_versions_are_r_and_a_semantic_version() -> None:
    assert check_reward_version("r1.2.0") == "r1.2.0"
    for bad in ("1.2.0", "r1.2", "rx.1.0", "r01.0.0"):
        with pytest.raises(ValueError, match="reward version"):
            check_reward_version(bad)


def test_the_registry_numbers_versions_in_a_lineage_of_their_own(fitted: RewardArtifact, nav_spec,
                                                                 tmp_path: Path) -> None:
    registry = RewardRegistry(str(tmp_path / "registry"))
    fitted = dataclasses.replace(fitted, parent=None)  # register numbers the artifact it is given: a copy
    first = registry.register(fitted)
    assert first.version == fitted.version == "r1.0.0" and first.parent is None
    second = registry.register(fitted, parent="r1.0.0")  # same spaces and network: a minor bump
    assert (second.version, second.parent) == ("r1.1.0", "r1.0.0")
    wide = RewardArtifact(nav_spec, RewardConfig(hidden=8, layers=1), FAST, fitted.reward)
    assert registry.register(wide).version == "r2.0.0"  # another network: a major bump
    assert [v.version for v in registry.versions()] == ["r1.0.0", "r1.1.0", "r2.0.0"]
    assert [h["version"] for h in registry.history()] == ["r1.0.0", "r1.1.0", "r2.0.0"]
    assert registry.get("latest").version == "r2.0.0"
    assert (tmp_path / "registry" / "rewards" / "versions" / "r1.1.0" / "manifest.json").is_file()
    assert load_reward(registry.reward_dir("r1.1.0")).parent == "r1.0.0"
    assert registry.fitting(nav_spec) == ["r1.0.0", "r1.1.0", "r2.0.0"]
    assert registry.fitting(dataclasses.replace(nav_spec, obs_dim=8)) == []
    with pytest.raises(RegistryError, match=r"unknown reward model 'r9.0.0'.*registered: r1.0.0, r1.1.0, r2.0.0"):
        registry.get("r9.0.0")
    with pytest.raises(RegistryError, match="unknown reward model 'r7.0.0'"):
        registry.register(fitted, parent="r7.0.0")


def test_the_cache_loads_a_version_once_and_drops_the_least_recently_used(fitted: RewardArtifact,
                                                                          tmp_path: Path) -> None:
    registry = RewardRegistry(str(tmp_path))
    for _ in range(3):
        registry.register(dataclasses.replace(fitted, parent=None))
    cache = RewardCache(registry, size=2)
    first = cache.get("r1.0.0")
    assert cache.get("r1.0.0") is first  # loaded once
    cache.get("r1.1.0")
    cache.get("r1.0.0")
    cache.get("r1.2.0")  # r1.1.0 was used least recently
    assert cache.loaded == ["r1.0.0", "r1.2.0"]
    with pytest.raises(RegistryError, match="without a registry"):
        RewardCache(None).get("r1.0.0")
