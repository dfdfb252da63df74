"""`wm export VERSION_OR_DIR --format onnx|torchscript`: a model's networks as files an edge device runs.

The export and its check are ``worldmodel.export`` (no Ray); this module resolves the model (a
directory, or a registry version or stage), loads the policy saved beside it, and reports. A latent
(camera) model directory exports its perception encoder, latent dynamics and heads
(``worldmodel.export_latent``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from worldmodel.export_manifest import DEFAULT_FORMAT, EXPORT_FORMATS, TOLERANCE


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[common])
    p.add_argument("ref", metavar="VERSION_OR_DIR",
                   help='a model directory, or with --registry a version, a stage ("production") or "latest"')
    p.add_argument("--format", choices=EXPORT_FORMATS, default=DEFAULT_FORMAT,
                   help="onnx (onnxruntime, the edge planner) or torchscript (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where to write the export (default: MODEL_DIR/export/FORMAT/, replaced if there)")
    p.add_argument("--registry", default=None, metavar="URI", help="registry directory or URI")
    p.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help="largest abs difference from the torch modules allowed on random inputs (default: %(default)s)")
    p.set_defaults(handler=run_export)


def _model_dir(args: argparse.Namespace) -> tuple[Path, str]:
    """The directory ``args.ref`` names and how to say where it came from."""
    from worldmodel.registry import ModelRegistry

    if Path(args.ref).is_dir():
        return Path(args.ref), str(args.ref)
    if args.registry is None:
        raise ValueError(f"{args.ref!r} is not a model directory; pass --registry URI to export a registered "
                         f"version or stage")
    registry = ModelRegistry(args.registry)
    version = registry.get(args.ref).version
    return registry.model_dir(version), f"{args.registry} version {version}"


def run_export(args: argparse.Namespace) -> dict[str, Any]:
    from planners.policy_artifact import load_policy
    from worldmodel.artifact import load_model
    from worldmodel.export import ExportConfig, default_out, export_model, require_packages
    from worldmodel.export_latent import export_latent
    from worldmodel.latent_artifact import is_latent_model, load_latent_model

    cfg = ExportConfig(format=args.format, tolerance=args.tolerance)  # invalid values raise before any work
    try:
        require_packages(cfg.format)
    except ImportError as err:  # a missing optional package is the user's to install: one line
        raise ValueError(str(err)) from None
    root, source = _model_dir(args)
    out = Path(args.out) if args.out else default_out(root, cfg.format)
    if is_latent_model(root):  # a camera model: its encoder, latent dynamics and heads
        model = load_latent_model(root)
        print(f"wm export: latent model {model.version} from {source} to {out} ({cfg.format})", file=sys.stderr)
        manifest = export_latent(model, out, cfg, source=source)
    else:
        model, policy = load_model(root), load_policy(root)
        print(f"wm export: model {model.version} from {source} to {out} ({cfg.format})", file=sys.stderr)
        manifest = export_model(model, out, cfg, policy=policy, source=source)
    graphs = manifest["graphs"]
    worst = max(g["max_abs_diff"] for g in graphs.values())
    result: dict[str, Any] = {"command": "export", "model": source, "version": model.version, "out": str(out),
                              "format": cfg.format, "graphs": {k: {"file": g["file"], "max_abs_diff": g["max_abs_diff"]}
                                                               for k, g in graphs.items()},
                              "max_abs_diff": worst, "tolerance": cfg.tolerance}
    result["_summary"] = [f"exported model {model.version} ({', '.join(graphs)}) as {cfg.format} to {out}",
                          f"checked against torch on random inputs: max abs difference {worst:.3g} "
                          f"(tolerance {cfg.tolerance:g})"]
    return result
