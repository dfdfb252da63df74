"""Export a world model's networks to ONNX or TorchScript, each checked equal to its torch module.

Exported: the dynamics ensemble (every member in one graph, normalisers and calibration inside it),
the reward model, the termination model when there is one, and a policy when the caller passes one
(``planners.policy_artifact.load_policy`` reads it; this layer does not import planners). There is no
encoder: a model directory holds vector-observation models, which read observations as they are, their
normalisers inside each graph; the manifest says so.

Every file is loaded back (onnxruntime for ONNX, ``torch.jit.load`` for TorchScript) and run on random
inputs with a batch size other than the one it was traced with; an output farther than the tolerance
from the torch module's fails the export, and nothing is written. The directory appears whole or not
at all (written beside its destination, then renamed).
"""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from worldmodel.artifact import staged_dir, write_json
from worldmodel.dynamics import EnsembleDynamics
from worldmodel.export_graphs import Graph, dynamics_graph, policy_graph, transition_graph
from worldmodel.export_manifest import (DEFAULT_FORMAT, EXPORT_FORMATS, FORMAT, MANIFEST, SUFFIX, TOLERANCE,
                                        ExportError, sha256_file)
from worldmodel.model import WorldModel

NO_ENCODER = ("vector observations: the model reads them as they are, and their normalisers are inside the "
              "dynamics, reward and termination graphs")
"""The manifest's ``encoder`` entry: why there is no encoder graph."""


@dataclass(frozen=True)
class ExportConfig:
    """How an export is made and checked."""

    format: str = DEFAULT_FORMAT
    """'onnx' or 'torchscript'."""
    tolerance: float = TOLERANCE
    """Largest difference allowed between an exported output and the torch module's, per unit of the output's
    scale (``export.check_outputs``: 1, or its largest magnitude where larger)."""
    trace_rows: int = 4
    """B of the example inputs a graph is traced with."""
    check_rows: int = 37
    """B of the random inputs it is checked on: another size, so the batch axis is checked dynamic too."""
    seed: int = 0
    """Seed of the random inputs."""
    opset: int = 17
    """ONNX opset."""

    def __post_init__(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {self.format!r}")
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.trace_rows < 1 or self.check_rows < 1:
            raise ValueError(f"trace_rows and check_rows must be >= 1, got {self.trace_rows} and {self.check_rows}")


def default_out(model_dir: str | os.PathLike[str], fmt: str) -> Path:
    """Where ``wm export`` writes unless told: ``MODEL_DIR/export/FORMAT/`` (the model's manifest lists its
    own files only, so the model directory stays valid)."""
    return Path(model_dir) / "export" / fmt


def graphs_of(model: WorldModel, policy: torch.nn.Module | None = None) -> list[Graph]:
    """The graphs to export from ``model`` (and ``policy``), on the CPU in eval mode."""
    if not isinstance(model.dynamics, EnsembleDynamics):
        raise ExportError(f"export supports 'ensemble' and 'mlp' dynamics; model {model.version} has "
                          f"{model.model_config.dynamics!r}")
    if model.model_config.uncertainty != "ensemble":  # a traced graph would hold one draw of the masks
        raise ExportError(f"export supports ensembles of independent members; model {model.version} has "
                          f"uncertainty {model.model_config.uncertainty!r}")
    model.to("cpu")
    graphs = [dynamics_graph(model.dynamics), transition_graph("reward", model.reward)]
    if model.termination is not None:
        graphs.append(transition_graph("termination", model.termination))
    if policy is not None:
        graphs.append(policy_graph(policy.to("cpu").eval()))
    return graphs


def export_model(model: WorldModel, out: str | os.PathLike[str], cfg: ExportConfig = ExportConfig(),
                 policy: torch.nn.Module | None = None, source: str | None = None,
                 overwrite: bool = True) -> dict[str, Any]:
    """Write ``model``'s graphs (and ``policy``'s) to the directory ``out``, checked; returns the manifest.

    Args:
        source: where the model came from (a directory, a registry version), recorded in the manifest.
        overwrite: replace an existing ``out``; False raises FileExistsError instead.

    Raises:
        ExportError: unsupported dynamics, or an output differing from torch by more than the tolerance.
        ImportError: the exporter or runtime the format needs is not installed.
    """
    graphs = graphs_of(model, policy)
    return write_graphs(graphs, out, cfg, lambda entries: _manifest(model, cfg, entries, source), overwrite)


def write_graphs(graphs: list[Graph], out: str | os.PathLike[str], cfg: ExportConfig,
                 manifest_of: Callable[[dict[str, Any]], dict[str, Any]], overwrite: bool = True) -> dict[str, Any]:
    """Write and check every graph in ``cfg.format`` into the directory ``out`` with the manifest
    ``manifest_of(entries)`` (entries: each graph's file, sha256, names, shapes and measured difference)."""
    final = Path(out).absolute()
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists")
    run = _onnx_runner() if cfg.format == "onnx" else _torchscript_runner
    final.parent.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {}
    with staged_dir(final) as tmp:
        for graph in graphs:
            path = tmp / f"{graph.name}{SUFFIX[cfg.format]}"
            _write(graph, path, cfg)
            diff = check_graph(graph, path, run, cfg)
            entries[graph.name] = {"file": path.name, "sha256": sha256_file(path), "inputs": list(graph.inputs),
                                   "outputs": list(graph.outputs), "shapes": graph.shapes, "max_abs_diff": diff}
        manifest = manifest_of(entries)
        write_json(tmp / MANIFEST, manifest)
    return manifest


def _manifest(model: WorldModel, cfg: ExportConfig, entries: dict[str, Any], source: str | None) -> dict[str, Any]:
    spec = model.spec
    return {"format": FORMAT, "export_format": cfg.format, "model_version": model.version, "source": source,
            "data_fingerprint": model.data_fingerprint, "env_id": spec.env_id, "obs_dim": spec.obs_dim,
            "act_dim": spec.act_dim, "act_low": list(spec.act_low), "act_high": list(spec.act_high),
            "dynamics": model.model_config.dynamics, "members": model.dynamics.members,
            "probabilistic": bool(model.dynamics.probabilistic), "encoder": {"file": None, "why": NO_ENCODER},
            "tolerance": cfg.tolerance, "check_rows": cfg.check_rows, "seed": cfg.seed,
            "opset": cfg.opset if cfg.format == "onnx" else None, "torch": torch.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "graphs": entries}


def _write(graph: Graph, path: Path, cfg: ExportConfig) -> None:
    """Trace ``graph`` on example inputs and save it in ``cfg.format``."""
    example = graph.sample(cfg.trace_rows, torch.Generator().manual_seed(cfg.seed + 1))
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of torch.export's, which needs onnxscript
        # as well; this one needs only onnx. Tracer warnings name shape reads that stay dynamic here.
        warnings.simplefilter("ignore")
        if cfg.format == "onnx":
            _require("onnx", "the ONNX exporter")
            torch.onnx.export(graph.module, example, str(path), input_names=list(graph.inputs),
                              output_names=list(graph.outputs), dynamic_axes=graph.batch_axes(),
                              opset_version=cfg.opset, dynamo=False)
        else:
            # Frozen: the weights become constants, so its outputs need no grad and it runs without autograd.
            torch.jit.save(torch.jit.freeze(torch.jit.trace(graph.module, example, check_trace=False)), str(path))


def check_graph(graph: Graph, path: Path, run: Any, cfg: ExportConfig) -> float:
    """Run the file at ``path`` on random inputs and compare with the torch module; returns the max abs
    difference. Raises ExportError when it exceeds ``cfg.tolerance`` (``check_outputs``: times the output's scale),
    or an output is missing or misshapen."""
    inputs = graph.sample(cfg.check_rows, torch.Generator().manual_seed(cfg.seed))
    got = run(path, graph, inputs)
    want = [w.numpy() for w in graph.reference(inputs)]
    return check_outputs(graph.name, dict(zip(graph.outputs, got)), dict(zip(graph.outputs, want)), cfg.tolerance)


def check_outputs(name: str, got: dict[str, np.ndarray], want: dict[str, np.ndarray], tolerance: float) -> float:
    """Max abs difference of ``got`` from ``want`` over every output; ExportError naming an output that differs by
    more than ``tolerance`` times its scale: 1, or its largest magnitude where that is larger. Per output, not per
    entry: float32 rounds by the size of what a computation adds up, so a centroid over 1,024 cells in arena units
    (a latent camera model's keypoints, up to 10) is off by as much at 0.5 as at 9.5."""
    diff = 0.0
    for key, expected in want.items():
        actual = np.asarray(got.get(key))
        if actual.shape != expected.shape:
            raise ExportError(f"exported {name}: output {key!r} has shape {actual.shape}, torch's {expected.shape}")
        d = float(np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0))
        scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
        if not np.isfinite(d) or d > tolerance * scale:
            raise ExportError(f"exported {name}: output {key!r} differs from torch's by {d:.3g}, more than the "
                              f"tolerance {tolerance:g} times its scale {scale:.3g}")
        diff = max(diff, d)
    return diff


def _torchscript_runner(path: Path, graph: Graph, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        return [o.numpy() for o in torch.jit.load(str(path))(*inputs)]


def _onnx_runner() -> Any:
    ort = _require("onnxruntime", "checking an ONNX export")

    def run(path: Path, graph: Graph, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(list(graph.outputs), {k: v.numpy() for k, v in zip(graph.inputs, inputs)})

    return run


def require_packages(fmt: str) -> None:
    """Raise ImportError, saying how to install it, when a package the format needs is missing."""
    if fmt == "onnx":
        _require("onnx", "the ONNX exporter")
        _require("onnxruntime", "checking an ONNX export")


def _require(module: str, what: str) -> Any:
    """Import ``module``, or an ImportError saying how to install it."""
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"{what} needs the {module!r} package, which is not installed: "
                          f"pip install 'fleetwm[export]'") from None
