"""A policy saved inside its world model's artifact: ``MODEL_DIR/policy/``, its own checksum and lineage.

Layout of ``MODEL_DIR/policy/``::

    policy.pt     the PolicyNet's state dict (weights, input statistics, action bounds)
    policy.json   format, version and parent, the model it was trained in, sizes, config, sha256, summary

The world model's manifest is not touched (it lists its own files only), so a policy can be trained,
replaced or removed without re-registering the model. Saving is atomic (a sibling temp directory
renamed into place, as ``worldmodel.artifact.save_model`` does); loading verifies the checksum and
that the policy was trained in this very model before building anything.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import torch

from planners.policy import POLICY_ZONES, PolicyConfig, PolicyNet
from worldmodel.artifact import ArtifactError, read_json, read_manifest, sha256_file, staged_dir, write_json

FORMAT = "fleetwm.policy/1"
POLICY_DIR = "policy"
WEIGHTS = "policy.pt"
INFO = "policy.json"
FIRST_VERSION = "1.0.0"


class PolicyError(ArtifactError):
    """A policy directory that is corrupted, of another format, or trained in another model."""


def save_policy(model_dir: str | os.PathLike[str], policy: PolicyNet, summary: dict[str, Any]) -> Path:
    """Write ``policy`` to ``model_dir/policy/`` atomically, replacing any policy there; returns that path.

    Versions: "1.0.0" for a model's first policy; then the next minor version when the config is
    unchanged, the next major one when it changed, with ``parent`` naming the one replaced.

    Args:
        model_dir: a world model directory (``save_model``'s layout).
        policy: the trained actor; its sizes must match the model's spec.
        summary: training settings and results, JSON-serialisable.

    Raises:
        ArtifactError: ``model_dir`` is not a model directory. PolicyError: the existing policy.json
            is unreadable (lineage would be lost). ValueError: sizes or summary do not fit.
    """
    root = Path(model_dir)
    manifest = read_manifest(root)
    spec = _model_spec(root)
    if (policy.obs_dim, policy.act_dim) != (spec.get("obs_dim"), spec.get("act_dim")):
        raise ValueError(f"policy sizes (S, A) = ({policy.obs_dim}, {policy.act_dim}) do not match the model's "
                         f"({spec.get('obs_dim')}, {spec.get('act_dim')}) in {root / 'config.json'}")
    try:
        summary_json = json.loads(json.dumps(summary))
    except (TypeError, ValueError) as err:
        raise ValueError(f"summary must be JSON-serialisable: {err}") from None
    previous = policy_info(root)
    config = policy.cfg.to_dict()
    version = _next_version(previous, config)
    final = root / POLICY_DIR
    with staged_dir(final) as tmp:
        torch.save({k: v.detach().cpu() for k, v in policy.state_dict().items()}, tmp / WEIGHTS)
        write_json(tmp / INFO, {
            "format": FORMAT, "version": version, "parent": previous["version"] if previous else None,
            "model_version": manifest["version"], "model_data_fingerprint": manifest.get("data_fingerprint", ""),
            "obs_dim": policy.obs_dim, "act_dim": policy.act_dim, "feature_dim": policy.feature_dim,
            "bounds": {"low": policy.act_low.tolist(), "high": policy.act_high.tolist()},
            "zones": policy.zones, "policy_zones": POLICY_ZONES, "config": config,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "sha256": sha256_file(tmp / WEIGHTS), "summary": summary_json,
        })
    return final


def policy_info(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The policy.json of ``model_dir``'s policy (format checked, weights not verified); None without one.

    Raises:
        PolicyError: policy/ exists but its policy.json is missing, not JSON, or of another format.
    """
    folder = Path(model_dir) / POLICY_DIR
    if not folder.is_dir():
        return None
    file = folder / INFO
    try:
        info = json.loads(file.read_text())
    except FileNotFoundError:
        raise PolicyError(f"{file}: missing; {folder} is not a fleetwm policy (remove it to save a new one)") from None
    except json.JSONDecodeError as err:
        raise PolicyError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else info
        raise PolicyError(f"{file}: format {found!r}, this fleetwm reads {FORMAT!r}")
    return info


def load_policy(model_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> PolicyNet | None:
    """The verified policy of ``model_dir`` in eval mode on ``device``; None when the model has none.

    Raises:
        PolicyError: a checksum mismatch, a wrong format, weights that do not fit policy.json, or a
            policy trained in another model (version or data fingerprint) or for another feature layout.
        ArtifactError: ``model_dir`` is not a model directory.
    """
    root = Path(model_dir)
    manifest = read_manifest(root)
    info = policy_info(root)
    if info is None:
        return None
    file, weights = root / POLICY_DIR / INFO, root / POLICY_DIR / WEIGHTS
    trained_in = (info.get("model_version"), info.get("model_data_fingerprint"))
    if trained_in != (manifest["version"], manifest.get("data_fingerprint", "")):
        held = (manifest["version"], manifest.get("data_fingerprint") or "no fingerprint")
        raise PolicyError(f"{file}: trained in model {trained_in[0]} ({trained_in[1] or 'no fingerprint'}), "
                          f"but {root} holds model {held[0]} ({held[1]})")
    if info.get("policy_zones") != POLICY_ZONES:
        raise PolicyError(f"{file}: made for {info.get('policy_zones')} zone slots, this fleetwm feeds {POLICY_ZONES}")
    if not weights.is_file():
        raise PolicyError(f"{weights}: missing (listed in {INFO})")
    actual = sha256_file(weights)
    if actual != info.get("sha256"):
        raise PolicyError(f"{weights}: checksum mismatch (expected sha256 {str(info.get('sha256'))[:12]}..., "
                          f"got {actual[:12]}...): the file is corrupted or was changed")
    try:
        cfg = PolicyConfig(**info["config"])
        policy = PolicyNet(info["obs_dim"], info["act_dim"], info["bounds"]["low"], info["bounds"]["high"], cfg,
                           zones=bool(info["zones"]))
        policy.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PolicyError(f"{weights}: does not match {INFO} ({first})") from None
    return policy.eval().to(device)


def _model_spec(root: Path) -> dict[str, Any]:
    """The model's env spec from its config.json (sizes and bounds)."""
    try:
        spec = read_json(root, "config.json")["spec"]
    except (FileNotFoundError, KeyError, TypeError):
        raise ArtifactError(f"{root / 'config.json'}: missing or without a 'spec'; "
                            "not a fleetwm model directory") from None
    return spec if isinstance(spec, dict) else {}


def _next_version(previous: dict[str, Any] | None, config: dict[str, Any]) -> str:
    if previous is None:
        return FIRST_VERSION
    try:
        major, minor, _ = (int(part) for part in str(previous["version"]).split("."))
    except (KeyError, ValueError):
        raise PolicyError(f"{INFO}: version {previous.get('version')!r} is not MAJOR.MINOR.PATCH") from None
    return f"{major}.{minor + 1}.0" if previous.get("config") == config else f"{major + 1}.0.0"
