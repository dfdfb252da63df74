"""`wm models list|show|promote|rollback`: the versions in a model registry and their stages."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from worldmodel.stages import PROMOTABLE

if TYPE_CHECKING:
    from worldmodel.registry import ModelRegistry, VersionInfo


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    registry = argparse.ArgumentParser(add_help=False)
    registry.add_argument("--registry", required=True, metavar="URI", help="registry directory or URI")
    p = sub.add_parser("models", parents=[common], help="list, inspect, promote and roll back registered models")
    # Nested subparsers take the parent's class, so their argparse errors become UsageError too.
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(p))

    a = actions.add_parser("list", parents=[common, registry], help="every version with its stage")
    a.set_defaults(handler=run_list)

    a = actions.add_parser("show", parents=[common, registry], help="one version's full record")
    a.add_argument("ref", metavar="VERSION_OR_STAGE", help='"1.2.0", "production", "shadow" or "latest"')
    a.set_defaults(handler=run_show)

    a = actions.add_parser("promote", parents=[common, registry], help="move a version to production or shadow")
    a.add_argument("version", metavar="VERSION")
    a.add_argument("--stage", choices=PROMOTABLE, default="production")
    a.add_argument("--force", action="store_true", help="promote even if its holdout score is not better")
    a.set_defaults(handler=run_promote)

    a = actions.add_parser("rollback", parents=[common, registry], help="return production to its previous version")
    a.set_defaults(handler=run_rollback)


def _registry(args: argparse.Namespace) -> ModelRegistry:
    # The registry loads torch (it reads models), so it waits for a handler: `wm models --help` answers at once.
    from worldmodel.registry import ModelRegistry

    return ModelRegistry(args.registry)


def _score(info: VersionInfo) -> float | None:
    candidate = (info.holdout or {}).get("candidate") or {}
    return candidate.get("score")


def _line(info: VersionInfo) -> str:
    score = _score(info)
    return (f"{info.version:>10}  {info.stage:<10}  {info.created}  parent {info.parent or '-':<8}  "
            f"holdout {'-' if score is None else f'{score:.4g}'}")


def run_list(args: argparse.Namespace) -> dict[str, Any]:
    versions = _registry(args).versions()
    rows = [{"version": v.version, "stage": v.stage, "created": v.created, "parent": v.parent,
             "holdout_score": _score(v)} for v in versions]
    result: dict[str, Any] = {"command": "models list", "registry": args.registry, "versions": rows}
    result["_summary"] = [f"{args.registry}: {len(rows)} version(s)", *map(_line, versions)]
    return result


def run_show(args: argparse.Namespace) -> dict[str, Any]:
    info = _registry(args).get(args.ref)
    result: dict[str, Any] = {"command": "models show", "registry": args.registry, **info.to_dict()}
    holdout = info.holdout
    result["_summary"] = [
        f"{args.registry}: version {info.version} ({info.stage}), created {info.created}",
        f"parent {info.parent or '-'}, data {info.data_fingerprint or '-'}",
        "holdout: none" if holdout is None else
        f"holdout score {_score(info)} vs production {holdout.get('production_version') or '-'}, "
        f"better: {holdout['better']}",
        f"lineage {json.dumps(info.lineage, sort_keys=True)}"]
    return result


def run_promote(args: argparse.Namespace) -> dict[str, Any]:
    info = _registry(args).promote(args.version, args.stage, force=args.force)
    result: dict[str, Any] = {"command": "models promote", "registry": args.registry, "version": info.version,
                              "stage": info.stage, "forced": args.force}
    result["_summary"] = [f"{args.registry}: {info.version} is now {info.stage}" + (" (forced)" if args.force
                                                                                     else "")]
    return result


def run_rollback(args: argparse.Namespace) -> dict[str, Any]:
    registry = _registry(args)
    info = registry.rollback()
    previous = registry.history()[-1]["from"]
    result: dict[str, Any] = {"command": "models rollback", "registry": args.registry, "version": info.version,
                              "stage": info.stage, "archived": previous}
    result["_summary"] = [f"{args.registry}: production rolled back from {previous} to {info.version}"]
    return result
