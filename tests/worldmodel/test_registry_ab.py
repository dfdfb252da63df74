"""The registry's live A/B test record: start, change of share, end, and promotion ending it; rollback after."""

from __future__ import annotations

from pathlib import Path

import pytest

from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.envs import SpaceSpec
from worldmodel.model import WorldModel, build_dynamics, build_reward
from worldmodel.registry import ModelRegistry
from worldmodel.registry_store import RegistryError

SPEC = SpaceSpec(obs_dim=6, act_dim=2, act_low=(-1.0, -1.0), act_high=(1.0, 1.0), env_id="Nav2D-v0")
CFG = ModelConfig(ensemble_size=2, hidden=8, layers=1, reward_hidden=8, reward_layers=1)


def _model() -> WorldModel:
    return WorldModel(SPEC, CFG, TrainConfig(), build_dynamics(SPEC, CFG), build_reward(SPEC, CFG), None)


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    """1.0.0 in production; 1.1.0 and 1.2.0 candidates."""
    reg = ModelRegistry(str(tmp_path / "reg"))
    reg.register(_model(), stage="production")
    reg.register(_model())
    reg.register(_model())
    return reg


def test_start_change_and_end(registry: ModelRegistry) -> None:
    assert registry.ab() is None and registry.end_ab() is None
    test = registry.start_ab("1.1.0", 0.1)
    assert (test.version, test.share, test.production) == ("1.1.0", 0.1, "1.0.0") and registry.ab() == test
    wider = registry.start_ab("1.1.0", 0.25)  # a new share keeps the test (and its statistics)
    assert (wider.id, wider.started, wider.share) == (test.id, test.started, 0.25)
    other = registry.start_ab("1.2.0", 0.1)  # another version: another test
    assert other.id != test.id and registry.get("1.1.0").stage == "candidate"
    assert registry.end_ab() == other and registry.ab() is None
    actions = [(h["action"], h["version"], h.get("reason")) for h in registry.history()[4:]]
    assert actions == [("ab_start", "1.1.0", "share 0.1"), ("ab_share", "1.1.0", "share 0.25"),
                       ("ab_start", "1.2.0", "share 0.1"), ("ab_end", "1.2.0", "ended")]


@pytest.mark.parametrize("version, share, message", [
    ("1.0.0", 0.1, "1.0.0 is production"), ("1.1.0", 0.0, "share must be"), ("1.1.0", 1.0, "share must be"),
    ("9.9.9", 0.1, "unknown version '9.9.9'")])
def test_refused_tests(registry: ModelRegistry, version: str, share: float, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        registry.start_ab(version, share)
    assert registry.ab() is None


def test_promoting_the_candidate_ends_the_test_and_rollback_undoes_it(registry: ModelRegistry) -> None:
    registry.start_ab("1.1.0", 0.1)
    registry.promote("1.2.0", "shadow")  # another version's promotion leaves the test running
    assert registry.ab() is not None
    registry.promote("1.1.0", force=True, reason="forced over live A/B test: reward is worse")
    assert registry.ab() is None and registry.production().version == "1.1.0"  # type: ignore[union-attr]
    promote, ended = registry.history()[-2:]
    assert (promote["action"], promote["forced"], promote["reason"]) == (
        "promote", True, "forced over live A/B test: reward is worse")
    assert (ended["action"], ended["reason"]) == ("ab_end", "promoted")
    assert registry.rollback().version == "1.0.0" and registry.get("1.1.0").stage == "archived"
    with pytest.raises(RegistryError, match="1.1.0 is archived"):
        registry.start_ab("1.1.0", 0.1)
