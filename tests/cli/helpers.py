"""Running `wm` in process as a script would: exactly one JSON object on stdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from cluster.cli import main
from worldmodel.latent import LatentConfig, LatentWorldModel
from worldmodel.latent_artifact import LatentArtifact, save_latent_model

TINY_LATENT = LatentConfig(image_shape=(32, 32, 3), latent=8, simnorm_group=4, members=2, hidden=16, depth=4)
"""A camera model small enough for command tests (untrained: what it plans is not the point)."""


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    """Run `wm ARGS --json`; returns (exit code, the JSON object, stderr).

    Only what the command itself prints counts: output captured before it (a test's setup, or a line
    Ray's driver printed while no command ran) is read and dropped first.
    """
    capsys.readouterr()
    code = main([*args, "--json"])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one JSON line on stdout, got {out!r}"
    return code, json.loads(lines[0]), err


def tiny_latent_dir(root: Path, version: str = "0.1.0") -> Path:
    """A saved, untrained ``TINY_LATENT`` camera model of PixelNav2D-v0 under ``root``."""
    torch.manual_seed(0)
    art = LatentArtifact(LatentWorldModel(TINY_LATENT).eval(), version=version, env_id="PixelNav2D-v0",
                         data_fingerprint="sha256:logs")
    return save_latent_model(art, root / "latent")
