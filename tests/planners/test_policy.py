"""PolicyNet (features, bounds, determinism, devices) and its artifact (round trip, checksums,
model binding, lineage, atomic saves)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import planners.policy_artifact as artifact
from planners.objectives import ZONES
from planners.policy import POLICY_ZONES, PolicyConfig, PolicyNet, feature_dim, policy_features
from planners.policy_artifact import PolicyError, load_policy, policy_info, save_policy
from worldmodel.artifact import ArtifactError, load_model, save_model
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.envs import SpaceSpec
from worldmodel.model import WorldModel, build_dynamics, build_reward

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LOW, HIGH = [-1.0, -0.5], [1.0, 2.0]
SPEC = SpaceSpec(6, 2, (-1.0, -1.0), (1.0, 1.0), "Nav2D-v0")
SMALL = ModelConfig(ensemble_size=2, hidden=8, layers=1, reward_hidden=8, reward_layers=1)


def nav_policy(zones: bool = True, **cfg) -> PolicyNet:
    torch.manual_seed(0)
    return PolicyNet(6, 2, LOW, HIGH, PolicyConfig(**cfg), zones=zones)


def nav_obs(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed)) * 3


def test_config_validates():
    with pytest.raises(ValueError, match="hidden"):
        PolicyConfig(hidden=0)
    with pytest.raises(ValueError, match="activation"):
        PolicyConfig(activation="gelu")
    with pytest.raises(ValueError, match="act_dim"):
        PolicyNet(6, 2, [-1.0], [1.0])


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_bounds_and_determinism(device):
    policy = nav_policy().to(device)
    # Large weights drive the squash to its limits: actions must still stay inside the box.
    with torch.no_grad():
        policy.head.weight.mul_(1e4)
    obs = nav_obs(64).to(device)
    params = {ZONES: torch.rand(64, 3, 3, device=device) * 4}
    actions = policy.act(obs, params)
    assert actions.shape == (64, 2) and actions.device.type == device
    low, high = torch.tensor(LOW, device=device), torch.tensor(HIGH, device=device)
    assert ((actions >= low) & (actions <= high)).all()
    assert policy.feature_dim == 6 + 3 * POLICY_ZONES == feature_dim(6, True)
    assert torch.equal(actions, policy.act(obs, params))


def test_fresh_policy_acts_near_the_box_centre():
    actions = nav_policy().act(nav_obs(32), None)
    centre = (torch.tensor(LOW) + torch.tensor(HIGH)) / 2
    assert (actions - centre).abs().max() < 0.1


def test_features_without_zones_are_the_observation():
    policy, obs = nav_policy(zones=False), nav_obs(5)
    assert torch.equal(policy.features(obs, {ZONES: torch.ones(5, 2, 3)}), obs)
    assert policy.feature_dim == 6


def test_zone_features_are_relative_nearest_first_and_padded():
    obs = torch.zeros(1, 6)
    obs[0, :2] = torch.tensor([1.0, 1.0])
    zones = torch.tensor([[[5.0, 1.0, 1.0],    # edge 3 away
                           [1.0, 3.0, 0.5],    # edge 1.5 away
                           [0.0, 0.0, 0.0]]])  # padding
    feats = policy_features(obs, {ZONES: zones}, zones=True)
    assert feats.shape == (1, 6 + 3 * POLICY_ZONES)
    assert torch.equal(feats[0, :6], obs[0])
    expected = torch.tensor([0.0, 2.0, 0.5, 4.0, 0.0, 1.0] + [0.0] * 6)
    torch.testing.assert_close(feats[0, 6:], expected)


def test_zone_features_invariant_to_zone_order():
    policy, obs = nav_policy(), nav_obs(16)
    zones = torch.rand(16, 4, 3) * 5
    shuffled = zones[:, torch.tensor([2, 0, 3, 1])]
    assert torch.equal(policy.features(obs, {ZONES: zones}), policy.features(obs, {ZONES: shuffled}))
    assert torch.equal(policy.act(obs, {ZONES: zones}), policy.act(obs, {ZONES: shuffled}))


def test_more_zones_than_slots_keeps_the_nearest():
    obs = torch.zeros(1, 6)
    centres = torch.arange(1, 8, dtype=torch.float32)  # zones at x = 1..7, radius 0.1
    zones = torch.stack([centres, torch.zeros(7), torch.full((7,), 0.1)], -1)[None].flip(1)  # farthest first
    feats = policy_features(obs, {ZONES: zones}, zones=True)[0, 6:].view(POLICY_ZONES, 3)
    torch.testing.assert_close(feats[:, 0], torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_missing_zones_give_zero_slots():
    obs = nav_obs(3)
    for params in (None, {}, {ZONES: torch.zeros(3, 0, 3)}):
        feats = policy_features(obs, params, zones=True)
        assert feats.shape == (3, 18) and not feats[:, 6:].any()


def test_bad_shapes_are_named():
    policy = nav_policy()
    with pytest.raises(ValueError, match="obs must be"):
        policy.act(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="zones"):
        policy.act(torch.zeros(3, 6), {ZONES: torch.zeros(2, 1, 3)})


def test_normalisation_applies_to_the_input():
    normalised, plain, obs = nav_policy(zones=False), nav_policy(zones=False), nav_obs(8)
    mean, std = torch.arange(6.0), torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 1.0])  # a constant feature: std 0
    normalised.set_normalisation(mean, std)
    by_hand = (obs - mean) / torch.where(std == 0, 1.0, std)
    torch.testing.assert_close(normalised(obs), plain(by_hand))
    assert "feature_mean" in normalised.state_dict()
    with pytest.raises(ValueError, match=r"\(F,\)"):
        normalised.set_normalisation(torch.zeros(5), torch.ones(5))


# The artifact: MODEL_DIR/policy/.

def model_dir(path: Path, version: str = "1.0.0") -> Path:
    torch.manual_seed(0)
    model = WorldModel(SPEC, SMALL, TrainConfig(), build_dynamics(SPEC, SMALL), build_reward(SPEC, SMALL), None,
                       version=version, data_fingerprint=f"sha256:{version}")
    return save_model(model, path)


def trained_policy(cfg: PolicyConfig = PolicyConfig(), seed: int = 1) -> PolicyNet:
    torch.manual_seed(seed)
    policy = PolicyNet(6, 2, SPEC.act_low, SPEC.act_high, cfg, zones=True)
    policy.set_normalisation(torch.linspace(-1, 1, policy.feature_dim), torch.linspace(0.5, 2, policy.feature_dim))
    with torch.no_grad():
        policy.head.weight.normal_()  # not the fresh near-zero head: a round trip must carry real weights
    return policy


@pytest.mark.parametrize("device", DEVICES)
def test_round_trip(tmp_path, device):
    root = model_dir(tmp_path / "m")
    manifest = (root / "manifest.json").read_text()
    assert load_policy(root) is None and policy_info(root) is None
    policy = trained_policy()
    saved = save_policy(root, policy, {"iterations": 3, "success": 0.9})
    assert saved == root / "policy" and sorted(p.name for p in saved.iterdir()) == ["policy.json", "policy.pt"]
    loaded = load_policy(root, device)
    assert loaded is not None and not loaded.training and loaded.act_low.device.type == device
    obs, zones = torch.randn(32, 6, device=device), torch.rand(32, 3, 3, device=device) * 3
    torch.testing.assert_close(loaded.act(obs, {ZONES: zones}), policy.to(device).act(obs, {ZONES: zones}))
    info = policy_info(root)
    assert info["format"] == "fleetwm.policy/1" and info["version"] == "1.0.0" and info["parent"] is None
    assert (info["model_version"], info["model_data_fingerprint"]) == ("1.0.0", "sha256:1.0.0")
    assert info["zones"] is True and info["config"] == PolicyConfig().to_dict()
    assert info["summary"] == {"iterations": 3, "success": 0.9} and len(info["sha256"]) == 64
    # The world model's own artifact is untouched and still verifies.
    assert (root / "manifest.json").read_text() == manifest
    load_model(root)


def test_corrupted_weights_name_the_file(tmp_path):
    root = model_dir(tmp_path / "m")
    save_policy(root, trained_policy(), {})
    weights = root / "policy" / "policy.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(PolicyError, match=r"policy\.pt: checksum mismatch") as err:
        load_policy(root)
    assert isinstance(err.value, ArtifactError)


def test_wrong_format_is_refused(tmp_path):
    root = model_dir(tmp_path / "m")
    save_policy(root, trained_policy(), {})
    info_file = root / "policy" / "policy.json"
    info_file.write_text(json.dumps({**json.loads(info_file.read_text()), "format": "other/9"}))
    with pytest.raises(PolicyError, match=r"policy\.json: format 'other/9'"):
        load_policy(root)


def test_a_policy_from_another_model_is_refused(tmp_path):
    first, second = model_dir(tmp_path / "a", "1.0.0"), model_dir(tmp_path / "b", "1.1.0")
    save_policy(first, trained_policy(), {})
    shutil.copytree(first / "policy", second / "policy")
    with pytest.raises(PolicyError, match=r"trained in model 1\.0\.0 .* holds model 1\.1\.0"):
        load_policy(second)


def test_version_lineage(tmp_path):
    root = model_dir(tmp_path / "m")
    save_policy(root, trained_policy(), {"run": 1})
    save_policy(root, trained_policy(seed=2), {"run": 2})
    info = policy_info(root)
    assert (info["version"], info["parent"], info["summary"]) == ("1.1.0", "1.0.0", {"run": 2})
    save_policy(root, trained_policy(PolicyConfig(hidden=32)), {"run": 3})
    info = policy_info(root)
    assert (info["version"], info["parent"]) == ("2.0.0", "1.1.0")
    assert load_policy(root).cfg == PolicyConfig(hidden=32)


def test_a_failed_save_leaves_the_previous_policy(tmp_path, monkeypatch):
    root = model_dir(tmp_path / "m")
    save_policy(root, trained_policy(), {"run": 1})

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(artifact, "write_json", fail)
    with pytest.raises(OSError, match="disk full"):
        save_policy(root, trained_policy(seed=2), {"run": 2})
    assert policy_info(root)["summary"] == {"run": 1} and load_policy(root) is not None
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []  # no temp dir left behind


def test_sizes_and_summary_are_checked(tmp_path):
    root = model_dir(tmp_path / "m")
    with pytest.raises(ValueError, match=r"\(S, A\) = \(5, 2\)"):
        save_policy(root, PolicyNet(5, 2, [-1, -1], [1, 1]), {})
    with pytest.raises(ValueError, match="JSON"):
        save_policy(root, trained_policy(), {"bad": object()})
    with pytest.raises(ArtifactError, match="no such model directory"):
        save_policy(tmp_path / "nowhere", trained_policy(), {})
