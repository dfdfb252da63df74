"""Model artifacts: a directory holding a world model's weights, config, metrics and provenance.

Layout of ``MODEL_DIR``::

    manifest.json   format, semantic version, creation time, data fingerprint, sha256 of every file
    config.json     env spec, model config, train config (the resolved config the model was built with)
    metrics.json    held-out metrics from training
    dynamics.pt     state dicts (normaliser statistics and calibration scales included)
    reward.pt
    termination.pt  only when the data had terminal states

Saving is atomic (a sibling temp directory renamed into place), loading verifies
every checksum before reading a byte of weights, and any mismatch is an
``ArtifactError`` naming the file.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from worldmodel.checksums import sha256_file
from worldmodel.config import ModelConfig, TrainConfig, config_from_dict
from worldmodel.envs import SpaceSpec
from worldmodel.model import WorldModel, build_dynamics, build_reward, build_termination

FORMAT = "fleetwm.worldmodel/1"
LATENT_FORMAT = "fleetwm.latentmodel/1"
"""A camera agents' latent world model (``worldmodel.latent_artifact``): same layout, its own loader."""
MANIFEST = "manifest.json"
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


class ArtifactError(ValueError):
    """A model directory that is missing, corrupted or does not match this fleetwm."""


def check_version(version: str) -> str:
    if not isinstance(version, str) or not _SEMVER.match(version):
        raise ValueError(f"version must be a semantic version MAJOR.MINOR.PATCH, got {version!r}")
    return version


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented, key-sorted JSON with a final newline."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_model(model: WorldModel, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write ``model`` to the directory ``path`` atomically; returns the path.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    check_version(model.version)
    return write_artifact(path, {f"{stem}.pt": module for stem, module in model.modules().items()},
                          {"spec": model.spec.to_dict(), "model": model.model_config.to_dict(),
                           "train": model.train_config.to_dict()}, model.metrics,
                          {"format": FORMAT, "version": model.version, "data_fingerprint": model.data_fingerprint},
                          overwrite)


def write_artifact(path: str | os.PathLike[str], weights: dict[str, torch.nn.Module], config: dict[str, Any],
                   metrics: dict[str, Any], manifest: dict[str, Any], overwrite: bool = False) -> Path:
    """Write an artifact directory atomically: each module's state dict under its file name, ``config.json``,
    ``metrics.json``, and the manifest (``manifest``'s fields, its creation time and every file's sha256).
    Every kind of artifact (world model, reward model, latent model) is written by this one function.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    final = Path(path).absolute()
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; pass overwrite=True (--force) to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(final) as tmp:
        for name, module in weights.items():
            torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, tmp / name)
        write_json(tmp / "config.json", config)
        write_json(tmp / "metrics.json", metrics)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write_json(tmp / MANIFEST, {**manifest, "created": created, "files": files})
    return final


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """A fresh directory beside ``final`` to write into; when the block ends it is synced to disk and put at
    ``final`` (``replace_dir``), or removed if the block raised, so ``final`` is never half-written."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        for p in tmp.iterdir():
            with p.open("rb") as f:
                os.fsync(f.fileno())
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the finished directory ``tmp`` at ``final``: a rename, with any old directory moved aside first."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)  # a leftover of a crash between the two renames
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old)


def read_manifest(path: str | os.PathLike[str], formats: tuple[str, ...] = (FORMAT,)) -> dict[str, Any]:
    """The manifest of a model directory, checked to be one of ``formats``; files are not verified here."""
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such model directory")
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{root}: missing {MANIFEST}; not a fleetwm model directory") from None
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{root / MANIFEST}: not valid JSON ({err})") from None
    found = manifest.get("format") if isinstance(manifest, dict) else manifest
    if found == LATENT_FORMAT and LATENT_FORMAT not in formats:
        raise ArtifactError(f"{root}: a latent (camera) world model; load it with "
                            "worldmodel.latent_artifact.load_latent_model")
    if found not in formats:
        raise ArtifactError(f"{root / MANIFEST}: format {found!r}, expected {' or '.join(map(repr, formats))}")
    return manifest


def verify(path: str | os.PathLike[str], formats: tuple[str, ...] = (FORMAT,)) -> dict[str, Any]:
    """Check every file listed in the manifest (one of ``formats``) against its sha256; returns the manifest."""
    root = Path(path)
    manifest = read_manifest(root, formats)
    for name, expected in manifest["files"].items():
        file = root / name
        if not file.is_file():
            raise ArtifactError(f"{file}: missing (listed in {MANIFEST})")
        actual = sha256_file(file)
        if actual != expected:
            raise ArtifactError(f"{file}: checksum mismatch (expected sha256 {expected[:12]}..., "
                                f"got {actual[:12]}...): the file is corrupted or was changed")
    return manifest


def read_json(root: Path, name: str) -> Any:
    """``root / name`` parsed; ``ArtifactError`` naming the file when it is not JSON."""
    try:
        return json.loads((root / name).read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{root / name}: not valid JSON ({err})") from None


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> WorldModel:
    """Load and verify a model directory written by ``save_model``.

    Raises:
        ArtifactError: a file is missing or corrupted, or the weights do not fit the config.
    """
    root = Path(path)
    manifest = verify(root)
    config = read_json(root, "config.json")
    try:
        spec = SpaceSpec.from_dict(config["spec"])
        model_cfg = config_from_dict(ModelConfig, config["model"])
        train_cfg = config_from_dict(TrainConfig, config["train"])
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{root / 'config.json'}: invalid config ({err})") from None
    modules = {"dynamics": build_dynamics(spec, model_cfg), "reward": build_reward(spec, model_cfg)}
    if "termination.pt" in manifest["files"]:
        modules["termination"] = build_termination(spec, model_cfg)
    for stem, module in modules.items():
        file = root / f"{stem}.pt"
        try:
            module.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError, KeyError) as err:
            first = str(err).strip().splitlines()[0]
            raise ArtifactError(f"{file}: weights do not match config.json ({first})") from None
        module.eval()
    model = WorldModel(spec, model_cfg, train_cfg, modules["dynamics"], modules["reward"],  # type: ignore[arg-type]
                       modules.get("termination"), version=manifest["version"],  # type: ignore[arg-type]
                       data_fingerprint=manifest.get("data_fingerprint", ""),
                       metrics=read_json(root, "metrics.json"))
    return model.to(device)
