"""The model registry: numbering, stages, refused promotions, rollback, remote URIs and concurrent writers."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import pytest
import torch

from worldmodel.artifact import ArtifactError
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.envs import SpaceSpec
from worldmodel.model import WorldModel, build_dynamics, build_reward
from worldmodel.registry import STAGES, ModelRegistry, RegistryError
from worldmodel.registry_records import VersionInfo
from worldmodel.registry_store import FORMAT

SPEC = SpaceSpec(obs_dim=6, act_dim=2, act_low=(-1.0, -1.0), act_high=(1.0, 1.0), env_id="Nav2D-v0")


def untrained(hidden: int = 8) -> WorldModel:
    """A small untrained world model: enough for the registry, which never looks at the weights."""
    cfg = ModelConfig(ensemble_size=2, hidden=hidden, layers=1, reward_hidden=8, reward_layers=1)
    return WorldModel(SPEC, cfg, TrainConfig(), build_dynamics(SPEC, cfg), build_reward(SPEC, cfg), None,
                      data_fingerprint="sha256:test", metrics={"loss": 0.5})


def holdout(candidate: float, production: float | None, version: str | None) -> dict:
    prod = None if production is None else {"score": production}
    better = production is None or candidate < production
    return {"candidate": {"score": candidate}, "production": prod, "production_version": version,
            "better": better}


def state(model: WorldModel) -> dict[str, torch.Tensor]:
    return {f"{stem}.{k}": v for stem, m in model.modules().items() for k, v in m.state_dict().items()}


def test_versions_are_numbered_by_the_registry(tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path / "reg"))
    model = untrained()
    first = registry.register(model, lineage={"rows": 10})
    assert (first.version, model.version, first.stage) == ("1.0.0", "1.0.0", "candidate")
    assert first.lineage == {"rows": 10} and first.metrics == {"loss": 0.5} and first.holdout is None
    assert registry.register(untrained()).version == "1.1.0"  # same spec and config: MINOR
    assert registry.register(untrained(hidden=16)).version == "2.0.0"  # other config: MAJOR
    assert registry.register(untrained(hidden=16)).version == "2.1.0"
    assert [v.version for v in registry.versions()] == ["1.0.0", "1.1.0", "2.0.0", "2.1.0"]
    assert (tmp_path / "reg" / "versions" / "2.1.0" / "manifest.json").is_file()
    index = json.loads((tmp_path / "reg" / "registry.json").read_text())
    assert index["format"] == FORMAT


def test_promotion_archives_the_old_production_and_rollback_restores_it(tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path))
    registry.register(untrained())  # 1.0.0, no holdout: may be promoted
    assert registry.production() is None
    assert registry.promote("1.0.0").stage == "production"
    registry.register(untrained(), parent="1.0.0", holdout=holdout(0.2, 0.4, "1.0.0"))  # 1.1.0
    assert registry.promote("1.1.0", "shadow").stage == "shadow"
    assert registry.shadow().version == "1.1.0" and registry.get("shadow").version == "1.1.0"
    registry.register(untrained(), parent="1.0.0", holdout=holdout(0.3, 0.4, "1.0.0"))  # 1.2.0
    registry.promote("1.2.0", "shadow")
    assert registry.get("1.1.0").stage == "candidate"  # the old shadow goes back to candidate
    registry.promote("1.1.0")
    stages = {v.version: v.stage for v in registry.versions()}
    assert stages == {"1.0.0": "archived", "1.1.0": "production", "1.2.0": "shadow"}
    assert registry.get("1.1.0").parent == "1.0.0"
    last = registry.history()[-1]
    assert (last["action"], last["stage"], last["from"], last["to"], last["forced"]) == \
        ("promote", "production", "1.0.0", "1.1.0", False)

    assert registry.rollback().version == "1.0.0"
    stages = {v.version: v.stage for v in registry.versions()}
    assert stages == {"1.0.0": "production", "1.1.0": "archived", "1.2.0": "shadow"}
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()  # 1.0.0 was the first production: nothing before it


def test_rollback_without_production_is_an_error(tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path))
    with pytest.raises(RegistryError, match="nothing to roll back to; production is unset"):
        registry.rollback()
    registry.register(untrained(), stage="production")
    with pytest.raises(RegistryError, match="production is 1.0.0 and has no previous"):
        registry.rollback()


def test_a_worse_candidate_is_refused_unless_forced(tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path))
    registry.register(untrained(), stage="production")
    registry.register(untrained(), parent="1.0.0", holdout=holdout(0.7, 0.25, "1.0.0"))
    with pytest.raises(RegistryError) as err:
        registry.promote("1.1.0")
    message = str(err.value)
    assert "1.1.0" in message and "1.0.0" in message and "0.7" in message and "0.25" in message
    assert "force" in message
    assert registry.production().version == "1.0.0"  # nothing changed
    assert registry.promote("1.1.0", force=True).stage == "production"
    assert registry.history()[-1]["forced"] is True
    assert registry.get("1.0.0").stage == "archived"


def test_a_refused_registration_writes_nothing(tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path))
    registry.register(untrained(), stage="production")
    with pytest.raises(RegistryError, match="refusing to promote 1.1.0"):
        registry.register(untrained(), holdout=holdout(0.9, 0.1, "1.0.0"), stage="production")
    assert [v.version for v in registry.versions()] == ["1.0.0"]
    assert not (tmp_path / "versions" / "1.1.0").exists()


def test_get_by_stage_latest_and_errors_that_name_the_value(tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path))
    with pytest.raises(RegistryError, match="has no versions"):
        registry.get("latest")
    registry.register(untrained(), stage="production")
    registry.register(untrained(hidden=16))
    assert registry.get("latest").version == "2.0.0"
    assert registry.get("production").version == "1.0.0"
    assert registry.get("candidate").version == "2.0.0"
    with pytest.raises(RegistryError, match="no shadow version"):
        registry.get("shadow")
    with pytest.raises(RegistryError, match=r"unknown version '9.9.9'.*known versions: 1.0.0, 2.0.0"):
        registry.get("9.9.9")
    with pytest.raises(RegistryError, match="unknown version '3.0.0'"):
        registry.promote("3.0.0")
    with pytest.raises(RegistryError, match="can promote to production or shadow, got stage 'archived'"):
        registry.promote("2.0.0", "archived")
    with pytest.raises(RegistryError, match="unknown parent '0.1.0'"):
        registry.register(untrained(), parent="0.1.0")
    with pytest.raises(RegistryError, match="holdout must be"):
        registry.register(untrained(), holdout={"score": 1.0})


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"format": "other/9", "versions": {}, "history": []}', "format 'other/9'"),
    (f'{{"format": "{FORMAT}", "versions": []}}', "'versions' object"),
])
def test_a_corrupt_index_names_the_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "registry.json").write_text(content)
    with pytest.raises(RegistryError, match=message) as err:
        ModelRegistry(str(tmp_path)).versions()
    assert str(tmp_path / "registry.json") in str(err.value)


def test_load_round_trip_is_exact(tiny_model: WorldModel, tmp_path: Path) -> None:
    model = copy.deepcopy(tiny_model)
    registry = ModelRegistry(str(tmp_path))
    info = registry.register(model, lineage={"data": "memory"})
    loaded = registry.load("latest")
    assert loaded.version == info.version == "1.0.0"
    a, b = state(model), state(loaded)
    assert a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k]) for k in a)
    assert info.metrics == json.loads(json.dumps(model.metrics))


def test_a_tampered_artifact_fails_verification(tmp_path: Path) -> None:
    registry = ModelRegistry(str(tmp_path))
    registry.register(untrained())
    (tmp_path / "versions" / "1.0.0" / "reward.pt").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="reward.pt: checksum mismatch"):
        registry.load("1.0.0")


def test_a_file_uri_registry_goes_through_the_remote_path(tmp_path: Path) -> None:
    uri, cache = f"file://{tmp_path / 'remote'}", tmp_path / "cache"
    registry = ModelRegistry(uri, cache_dir=str(cache))
    assert registry.remote
    model = untrained()
    registry.register(model, stage="production")
    registry.register(untrained(), holdout=holdout(0.1, 0.2, "1.0.0"))
    assert (tmp_path / "remote" / "versions" / "1.1.0" / "manifest.json").is_file()
    assert not (tmp_path / "remote" / ".lock").exists()  # object-store semantics: no local lock
    local = registry.model_dir("production")
    assert local.is_relative_to(cache) and local.name == "1.0.0"
    loaded = ModelRegistry(uri, cache_dir=str(cache)).load("1.0.0")
    a, b = state(model), state(loaded)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert registry.model_dir("1.0.0") == local  # cached: versions are immutable
    # A corrupted upload is caught when it is downloaded, and names the registry.
    (tmp_path / "remote" / "versions" / "1.1.0" / "dynamics.pt").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match=r"file://.* version 1.1.0 \(downloaded\).*dynamics.pt: checksum"):
        registry.model_dir("1.1.0")
    assert not (cache / local.parent.name / "1.1.0").exists()
    assert registry.promote("1.1.0").stage == "production" and registry.rollback().version == "1.0.0"


def test_concurrent_registrations_get_distinct_versions(tmp_path: Path) -> None:
    registry_uri, n = str(tmp_path), 4
    barrier, infos, errors = threading.Barrier(n), [], []

    def register() -> None:
        try:
            barrier.wait()
            infos.append(ModelRegistry(registry_uri).register(untrained()))
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=register) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(i.version for i in infos) == ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]
    assert [v.version for v in ModelRegistry(registry_uri).versions()] == ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]


def test_version_info_round_trips_through_to_dict(tmp_path: Path) -> None:
    info = ModelRegistry(str(tmp_path)).register(untrained())
    assert VersionInfo(**info.to_dict()) == info and info.stage in STAGES
