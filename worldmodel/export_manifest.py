"""The manifest of an exported model (``export.json``): its names and its reading, in plain Python.

No torch here: a runtime on an edge device (``planners.edge_models``) reads and verifies an export
with numpy and onnxruntime alone.

Layout of an export directory::

    export.json          this manifest: format, model version, per-file sha256, each graph's input and
                         output names and shapes, the max abs difference measured against torch, tolerance
    dynamics.onnx        (or .pt for TorchScript) the dynamics ensemble, every member in one graph
    reward.onnx          the reward model
    termination.onnx     only when the model has one
    policy.onnx          only when the model directory holds a policy
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from worldmodel.checksums import sha256_file

FORMAT = "fleetwm.export/1"
"""The manifest's ``format``."""
MANIFEST = "export.json"
"""The manifest's file name in an export directory."""
EXPORT_FORMATS = ("onnx", "torchscript")
"""What ``wm export --format`` may name."""
DEFAULT_FORMAT = "onnx"
"""``wm export``'s format unless told otherwise: what onnxruntime, and so the edge planner, runs."""
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
"""Each format's file suffix."""
TOLERANCE = 1e-5
"""Largest difference allowed between an exported graph's outputs and the torch module's, per unit of the
output's scale (1, or its largest magnitude where larger)."""


class ExportError(ValueError):
    """An export that cannot be made, that differs from torch beyond the tolerance, or that is corrupted."""


def read_export(path: str | os.PathLike[str], fmt: str | None = None) -> dict[str, Any]:
    """The manifest of an export directory, every graph's file checked against its sha256.

    Args:
        fmt: the format expected ("onnx" or "torchscript"); None accepts either.

    Raises:
        ExportError: no such directory, no or unreadable manifest, another format, a missing or changed file.
    """
    root = Path(path)
    file = root / MANIFEST
    if not root.is_dir():
        raise ExportError(f"{root}: no such export directory")
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise ExportError(f"{root}: missing {MANIFEST}; not a fleetwm export (make one with `wm export`)") from None
    except json.JSONDecodeError as err:
        raise ExportError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise ExportError(f"{file}: format {found!r}, this fleetwm reads {FORMAT!r}")
    if fmt is not None and manifest.get("export_format") != fmt:
        raise ExportError(f"{root}: holds a {manifest.get('export_format')!r} export, expected {fmt!r}")
    for name, graph in manifest["graphs"].items():
        target = root / graph["file"]
        if not target.is_file():
            raise ExportError(f"{target}: missing (graph {name!r} in {MANIFEST})")
        if sha256_file(target) != graph["sha256"]:
            raise ExportError(f"{target}: checksum mismatch with {MANIFEST}: the file is corrupted or was changed")
    return manifest
