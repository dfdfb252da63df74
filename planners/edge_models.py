"""An ONNX export (``wm export``) loaded into onnxruntime sessions: the edge planner's world model.

numpy and onnxruntime only: no torch, no Ray. The export's manifest is verified (format and every
file's sha256) before a session is built.

Shapes: ``E`` members, ``Er`` reward members, ``B`` batch, ``S`` state, ``A`` action.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldmodel.export_manifest import ExportError, read_export


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("the edge planner needs the 'onnxruntime' package, which is not installed: "
                          "pip install 'fleetwm[export]'") from None
    return onnxruntime


@dataclass(frozen=True)
class EdgeSpec:
    """What the edge planner needs to know about the exported model."""

    obs_dim: int
    """S."""
    act_dim: int
    """A."""
    act_low: np.ndarray
    """(A,) lower action bound."""
    act_high: np.ndarray
    """(A,) upper action bound."""
    members: int
    """E, dynamics members."""
    version: str
    """The exported model's version."""


class EdgeModels:
    """The exported dynamics and reward (and policy, when exported) as onnxruntime sessions."""

    def __init__(self, export_dir: str | os.PathLike[str], threads: int = 1) -> None:
        """
        Args:
            export_dir: an ONNX export directory (``wm export --format onnx``).
            threads: onnxruntime's intra-op threads per session (1: one core, as the benchmarks compare).
        """
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        root = Path(export_dir)
        manifest = read_export(root, "onnx")
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.sessions = {name: ort.InferenceSession(str(root / g["file"]), options, providers=["CPUExecutionProvider"])
                         for name, g in manifest["graphs"].items()}
        self.manifest = manifest
        self.spec = EdgeSpec(manifest["obs_dim"], manifest["act_dim"], np.asarray(manifest["act_low"], np.float32),
                             np.asarray(manifest["act_high"], np.float32), manifest["members"],
                             manifest["model_version"])

    def step(self, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each member's next state and its std: (E, B, S), (E, B, A) float32 -> ((E, B, S), (E, B, S))."""
        mean, std = self.sessions["dynamics"].run(None, {"obs": obs, "action": action})
        return mean, std

    def reward(self, obs: np.ndarray, action: np.ndarray, new_obs: np.ndarray) -> np.ndarray:
        """The reward model's members' mean: (B, S), (B, A), (B, S) -> (B,)."""
        (out,) = self.sessions["reward"].run(None, {"obs": obs, "action": action, "new_obs": new_obs})  # (Er, B)
        return out[0] if len(out) == 1 else out.mean(0)

    def policy(self, features: np.ndarray) -> np.ndarray:
        """The exported policy's action: features (B, F) -> (B, A)."""
        if "policy" not in self.sessions:
            raise ExportError(f"model {self.spec.version}'s export has no policy (the model directory had none)")
        return self.sessions["policy"].run(None, {"features": features})[0]
