"""Latent model artifacts: a directory holding a ``LatentWorldModel`` (camera agents) and its provenance.

Layout of ``MODEL_DIR`` (the vector artifact's, ``worldmodel.artifact``, with one weights file)::

    manifest.json   format LATENT_FORMAT, semantic version, creation time, data fingerprint, spaces
                    (image shape, action size, env id), sha256 of every file
    config.json     the model's LatentConfig and the training config it was fitted with
    metrics.json    held-out diagnostics from training
    latent.pt       the state dict (encoder, ensemble, heads, reward normaliser, step scale)

Saving is atomic (a sibling temp directory renamed into place) and loading verifies every checksum before
reading a byte of weights; any mismatch is an ``ArtifactError`` naming the file. ``worldmodel.artifact``'s
``load_model`` refuses these directories, naming ``load_latent_model``; ``is_latent_model`` tells them apart.

Dimensions: ``H, W, C`` frame shape, ``A`` action size.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from worldmodel.artifact import LATENT_FORMAT, MANIFEST, ArtifactError, check_version, read_json, verify, write_artifact
from worldmodel.config import config_from_dict
from worldmodel.envs import SpaceSpec
from worldmodel.latent import LatentConfig, LatentWorldModel

WEIGHTS = "latent.pt"
"""The state dict's file name."""


@dataclass
class LatentArtifact:
    """A latent world model with what its directory records (a mutable holder, as ``WorldModel`` is).

    Attributes:
        model: the model, in eval mode.
        version: semantic version of the artifact.
        env_id: gymnasium id of the camera env it was trained on.
        data_fingerprint: fingerprint of the logs it was trained on ("" when unknown).
        train: the training config, as a dict (JSON-friendly).
        metrics: held-out diagnostics from training.
    """

    model: LatentWorldModel
    version: str = "0.1.0"
    env_id: str = ""
    data_fingerprint: str = ""
    train: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def cfg(self) -> LatentConfig:
        return self.model.cfg

    @property
    def device(self) -> torch.device:
        return self.model.step_std.device

    @property
    def spec(self) -> SpaceSpec:
        """The spaces as the vector models' ``SpaceSpec`` has them: frames alone (S = 0), actions in [-1, 1]^A."""
        a = self.model.cfg.act_dim
        return SpaceSpec(obs_dim=0, act_dim=a, act_low=(-1.0,) * a, act_high=(1.0,) * a, env_id=self.env_id,
                         image_shape=tuple(self.model.cfg.image_shape))

    def spaces(self) -> dict[str, Any]:
        """What the model reads and writes: image shape (H, W, C), frames stacked, action size A, env id."""
        cfg = self.model.cfg
        return {"image_shape": list(cfg.image_shape), "frames": cfg.frames, "act_dim": cfg.act_dim,
                "env_id": self.env_id}


def latent_config_to_dict(cfg: LatentConfig) -> dict[str, Any]:
    return {**dataclasses.asdict(cfg), "image_shape": list(cfg.image_shape)}


def latent_config_from_dict(data: dict[str, Any]) -> LatentConfig:
    """Inverse of ``latent_config_to_dict``; ValueError naming an unknown or bad field."""
    data = {"zone_context": 3, **data}  # saved before the field existed: the map's 3x3 convolutions
    if "image_shape" in data:
        data["image_shape"] = tuple(int(n) for n in data["image_shape"])
    return config_from_dict(LatentConfig, data)


def save_latent_model(artifact: LatentArtifact, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write ``artifact`` to the directory ``path`` atomically; returns the path.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: the version is not MAJOR.MINOR.PATCH.
    """
    check_version(artifact.version)
    return write_artifact(path, {WEIGHTS: artifact.model},
                          {"model": latent_config_to_dict(artifact.cfg), "train": artifact.train}, artifact.metrics,
                          {"format": LATENT_FORMAT, "version": artifact.version,
                           "data_fingerprint": artifact.data_fingerprint, "spaces": artifact.spaces()}, overwrite)


def is_latent_model(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a latent model artifact (by its manifest's format; nothing verified)."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == LATENT_FORMAT


def load_latent_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LatentArtifact:
    """Load and verify a model directory written by ``save_latent_model``; the model is in eval mode.

    Raises:
        ArtifactError: not a latent model directory, a file is missing or corrupted, or the weights do not fit
            the config.
    """
    root = Path(path)
    manifest = verify(root, formats=(LATENT_FORMAT,))
    config = read_json(root, "config.json")
    try:
        cfg = latent_config_from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{root / 'config.json'}: invalid latent model config ({err})") from None
    model = LatentWorldModel(cfg)
    try:
        model.load_state_dict(torch.load(root / WEIGHTS, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, KeyError) as err:
        first = str(err).strip().splitlines()[0]
        raise ArtifactError(f"{root / WEIGHTS}: weights do not match config.json ({first})") from None
    spaces = manifest.get("spaces", {})
    return LatentArtifact(model.eval().to(device), version=manifest["version"], env_id=spaces.get("env_id", ""),
                          data_fingerprint=manifest.get("data_fingerprint", ""), train=config.get("train", {}),
                          metrics=read_json(root, "metrics.json"))
