"""The kinds of model a registry holds, and what the registry needs of each kind's artifact: its identity (what
version numbering compares), saving, and loading a directory whatever its kind.

- ``VECTOR``: a ``WorldModel`` (``worldmodel.artifact``), agents that observe vectors.
- ``LATENT``: a ``LatentArtifact`` (``worldmodel.latent_artifact``), camera agents' latent world model.

Both are directories with a checksummed manifest, so the registry stores, downloads and verifies them alike, and
the planner deployment loads either from a registered version's directory (``planners.service.load_planner``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

import torch

from worldmodel.artifact import FORMAT, LATENT_FORMAT, load_model, read_manifest, save_model
from worldmodel.latent_artifact import (LatentArtifact, is_latent_model, latent_config_to_dict, load_latent_model,
                                        save_latent_model)
from worldmodel.model import WorldModel
from worldmodel.registry_records import LATENT, VECTOR

RegisteredModel = Union[WorldModel, LatentArtifact]
"""A model the registry stores: a vector world model or a latent (camera) one."""

ARTIFACT_FORMATS = (FORMAT, LATENT_FORMAT)
"""Manifest formats a registered version's directory may have."""


def kind_of(model: RegisteredModel) -> str:
    """``LATENT`` for a ``LatentArtifact``, ``VECTOR`` for a ``WorldModel``; TypeError for anything else."""
    if isinstance(model, LatentArtifact):
        return LATENT
    if isinstance(model, WorldModel):
        return VECTOR
    raise TypeError(f"a registry stores a WorldModel or a LatentArtifact, got {type(model).__name__}")


def identity(model: RegisteredModel) -> dict[str, Any]:
    """What a new version is compared on to number it (equal identity: MINOR bump, else MAJOR), as plain JSON.

    A vector model's is its spec and model config, as registries have always recorded it; a latent model's also
    names its kind, so it never equals a vector model's."""
    if kind_of(model) == LATENT:
        config = {"kind": LATENT, "spec": model.spec.to_dict(), "model": latent_config_to_dict(model.cfg)}
    else:
        config = {"spec": model.spec.to_dict(), "model": model.model_config.to_dict()}
    return json.loads(json.dumps(config))


def save(model: RegisteredModel, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write ``model``'s artifact directory atomically with its kind's writer; returns the path."""
    if kind_of(model) == LATENT:
        return save_latent_model(model, path, overwrite=overwrite)  # type: ignore[arg-type]
    return save_model(model, path, overwrite=overwrite)  # type: ignore[arg-type]


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> RegisteredModel:
    """Load and verify a model directory of either kind (every checksum, the config, weights that fit it).

    Raises:
        ArtifactError: not a model directory, or a file is missing, corrupted or does not fit.
    """
    return load_latent_model(path, device) if is_latent_model(path) else load_model(path, device)


def manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a model directory of either kind (files not verified here: ``load`` does)."""
    return read_manifest(path, ARTIFACT_FORMATS)
