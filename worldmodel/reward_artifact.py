"""Reward model artifacts: a reward model on its own, with the spaces it fits and what it was fitted on.

A fleet changes what it rewards more often than how its world moves, so a reward model is versioned,
stored and registered apart from the world model whose dynamics it plans with (``worldmodel.reward_registry``).
Termination stays with the world model: planners read only the reward.

Layout of ``REWARD_DIR``::

    manifest.json   format, version, parent, model version, data fingerprint and URI, sha256 of every file
    config.json     env spec (the spaces it fits), reward network config, train config
    metrics.json    held-out metrics from fitting
    reward.pt       state dict (normaliser statistics included)

Saving is atomic and loading verifies every checksum first, as for world models (``worldmodel.artifact``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from worldmodel.artifact import ArtifactError, read_json, write_artifact
from worldmodel.checksums import sha256_file
from worldmodel.config import ModelConfig, TrainConfig, config_from_dict
from worldmodel.envs import SpaceSpec
from worldmodel.model import build_reward
from worldmodel.reward import RewardModel

FORMAT = "fleetwm.reward/1"
MANIFEST = "manifest.json"
WEIGHTS = "reward.pt"
VERSION_PREFIX = "r"
"""Reward versions read "r1.2.0", so a request's ``reward_model`` cannot be taken for a world-model version."""
_REWARD_VERSION = re.compile(r"^r(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
"""'r' and a semantic version, as ``worldmodel.artifact.check_version`` reads one."""


def check_reward_version(version: str) -> str:
    """``version`` when it is "r" followed by a semantic version ("r1.2.0")."""
    if not isinstance(version, str) or not _REWARD_VERSION.match(version):
        raise ValueError(f"a reward version is 'r' and a semantic version, e.g. 'r1.2.0'; got {version!r}")
    return version


@dataclass(frozen=True)
class RewardConfig:
    """The reward network's architecture."""

    hidden: int = ModelConfig.reward_hidden
    """Hidden units per layer."""
    layers: int = ModelConfig.reward_layers
    """Hidden layers."""
    activation: str = ModelConfig.activation
    """Hidden activation ('relu', 'silu' or 'hardswish')."""

    def __post_init__(self) -> None:
        self.model_config()  # ModelConfig validates the same fields, with the same messages

    def model_config(self) -> ModelConfig:
        """A ``ModelConfig`` whose reward fields are these (what ``build_reward`` and training read)."""
        return ModelConfig(reward_hidden=self.hidden, reward_layers=self.layers, activation=self.activation)

    @classmethod
    def of(cls, cfg: ModelConfig) -> "RewardConfig":
        """The reward architecture of a world model's config."""
        return cls(cfg.reward_hidden, cfg.reward_layers, cfg.activation)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class RewardMismatch(ValueError):
    """A reward model asked to plan with a world model whose spaces it does not fit."""


@dataclass
class RewardArtifact:
    """A trained reward model and its provenance.

    Attributes:
        spec: the observation/action spaces it reads (from the world model it was fitted for).
        config: the network's architecture.
        train_config: how it was fitted.
        reward: the model r(s, a, s').
        version: "rMAJOR.MINOR.PATCH" (the registry numbers registered ones).
        parent: the reward version it was trained to replace, or None.
        model_version: the world model version whose spaces it was fitted for ("" when none).
        data_fingerprint: "sha256:..." of the logs it was fitted on ("" when fitted from memory).
        data_uri: where those logs were.
        metrics: held-out metrics of the fit.
    """

    spec: SpaceSpec
    config: RewardConfig
    train_config: TrainConfig
    reward: RewardModel
    version: str = "r0.1.0"
    parent: str | None = None
    model_version: str = ""
    data_fingerprint: str = ""
    data_uri: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def check_fits(self, spec: SpaceSpec, model: str = "the world model") -> None:
        """Raise ``RewardMismatch`` unless this reward reads ``spec``'s spaces (env, S and A).

        Args:
            model: how to name the world model in the message (e.g. "model 1.2.0").
        """
        mine, theirs = self.spec, spec
        if (mine.env_id, mine.obs_dim, mine.act_dim) != (theirs.env_id, theirs.obs_dim, theirs.act_dim):
            raise RewardMismatch(
                f"reward model {self.version} fits {mine.env_id or 'an unnamed env'} with (S, A) = "
                f"({mine.obs_dim}, {mine.act_dim}); {model} has {theirs.env_id or 'an unnamed env'} with "
                f"({theirs.obs_dim}, {theirs.act_dim})")

    def to(self, device: torch.device | str) -> "RewardArtifact":
        self.reward.to(device)
        return self

    def manifest_fields(self) -> dict[str, Any]:
        """What the manifest says of the artifact besides its format, time and files."""
        return {"version": self.version, "parent": self.parent, "model_version": self.model_version,
                "data_fingerprint": self.data_fingerprint, "data_uri": self.data_uri}


def build_reward_model(spec: SpaceSpec, cfg: RewardConfig) -> RewardModel:
    """A fresh, untrained reward model for ``spec``'s spaces."""
    return build_reward(spec, cfg.model_config())


def save_reward(artifact: RewardArtifact, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write ``artifact`` to the directory ``path`` atomically; returns the path.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    check_reward_version(artifact.version)
    return write_artifact(path, {WEIGHTS: artifact.reward},
                          {"spec": artifact.spec.to_dict(), "reward": artifact.config.to_dict(),
                           "train": artifact.train_config.to_dict()}, artifact.metrics,
                          {"format": FORMAT, **artifact.manifest_fields()}, overwrite)


def verify_reward(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check the directory's format and every file against its sha256; returns the manifest.

    Raises:
        ArtifactError: not a reward model directory, or a file is missing or changed.
    """
    root = Path(path)
    if not (root / MANIFEST).is_file():
        raise ArtifactError(f"{root}: no {MANIFEST}; not a reward model directory (`wm reward train` writes one)")
    manifest = read_json(root, MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise ArtifactError(f"{root / MANIFEST}: format {found!r}, a reward model is {FORMAT!r}")
    for name, expected in manifest["files"].items():
        file = root / name
        if not file.is_file():
            raise ArtifactError(f"{file}: missing (listed in {MANIFEST})")
        if sha256_file(file) != expected:
            raise ArtifactError(f"{file}: checksum mismatch (expected sha256 {expected[:12]}...): the file is "
                                f"corrupted or was changed")
    return manifest


def load_reward(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> RewardArtifact:
    """Load and verify a directory written by ``save_reward``.

    Raises:
        ArtifactError: a file is missing or corrupted, or the weights do not fit the config.
    """
    root = Path(path)
    manifest = verify_reward(root)
    config = read_json(root, "config.json")
    try:
        spec = SpaceSpec.from_dict(config["spec"])
        cfg = config_from_dict(RewardConfig, config["reward"])
        train_cfg = config_from_dict(TrainConfig, config["train"])
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{root / 'config.json'}: invalid config ({err})") from None
    reward = build_reward_model(spec, cfg)
    try:
        reward.load_state_dict(torch.load(root / WEIGHTS, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, KeyError) as err:
        first = str(err).strip().splitlines()[0]
        raise ArtifactError(f"{root / WEIGHTS}: weights do not match config.json ({first})") from None
    reward.eval()
    artifact = RewardArtifact(spec, cfg, train_cfg, reward, version=manifest["version"],
                              parent=manifest.get("parent"), model_version=manifest.get("model_version", ""),
                              data_fingerprint=manifest.get("data_fingerprint", ""),
                              data_uri=manifest.get("data_uri", ""), metrics=read_json(root, "metrics.json"))
    return artifact.to(device)
