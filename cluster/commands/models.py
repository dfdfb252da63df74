"""`wm models list|show|promote|rollback|register|evaluate|ab|compare`: the versions in a model registry, their
stages, putting a `wm train` artifact into a registry, scoring any version on any logs, and live A/B tests.

A live A/B test (`wm models ab VERSION --share 0.1`) has running servers (`wm serve` with the A/B candidate
deployment) serve a sticky share of the agents with VERSION; `wm models compare` shows both arms' live metrics
with 95% intervals, and `wm models promote VERSION` refuses while they say VERSION is worse or has too little
data (``serving.ab_gate``); `--force` promotes anyway and the history records what it overrode."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.commands.models_evaluate import add_evaluate_options
from worldmodel.stages import PROMOTABLE

if TYPE_CHECKING:
    from worldmodel.registry import ModelRegistry
    from worldmodel.registry_records import VersionInfo


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
    a.add_argument("--force", action="store_true",
                   help="promote even if its holdout score is not better, or its live A/B metrics are worse")
    a.set_defaults(handler=run_promote)

    a = actions.add_parser("ab", parents=[common, registry],
                           help="serve a share of the agents with a version (live A/B test), or end the test")
    a.add_argument("version", metavar="VERSION", nargs="?", help="the candidate version (with --share)")
    a.add_argument("--share", type=float, default=None, help="share of the agents it serves, in (0, 1)")
    a.add_argument("--end", action="store_true", help="end the running test: its agents go back to production")
    a.set_defaults(handler=run_ab)

    a = actions.add_parser("compare", parents=[common, registry],
                           help="the running A/B test's arms: live metrics with 95%% intervals and verdicts")
    a.set_defaults(handler=run_compare)

    a = actions.add_parser("rollback", parents=[common, registry], help="return production to its previous version")
    a.set_defaults(handler=run_rollback)

    a = actions.add_parser("register", parents=[common, registry],
                           help="put a `wm train` model directory (vector or latent) into the registry "
                                "(verified first)")
    a.add_argument("model_dir", metavar="DIR")
    a.add_argument("--stage", choices=("candidate", *PROMOTABLE), default="candidate",
                   help="production and shadow follow `promote`'s rules (default: %(default)s)")
    a.add_argument("--parent", default=None, metavar="VERSION", help="the registered version it was trained to replace")
    a.set_defaults(handler=run_register)

    a = actions.add_parser("evaluate", parents=[common],
                           help="score a version or model directory on logs: error and calibration by horizon")
    add_evaluate_options(a)


def _registry(args: argparse.Namespace) -> ModelRegistry:
    # The registry loads torch (it reads models), so it waits for a handler: `wm models --help` answers at once.
    from worldmodel.registry import ModelRegistry

    return ModelRegistry(args.registry)


def _score(info: VersionInfo) -> float | None:
    candidate = (info.holdout or {}).get("candidate") or {}
    return candidate.get("score")


def _line(info: VersionInfo) -> str:
    score = _score(info)
    return (f"{info.version:>10}  {info.stage:<10}  {info.kind:<6}  {info.created}  parent {info.parent or '-':<8}  "
            f"holdout {'-' if score is None else f'{score:.4g}'}")


def run_list(args: argparse.Namespace) -> dict[str, Any]:
    registry = _registry(args)
    versions, test = registry.versions(), registry.ab()
    rows = [{"version": v.version, "stage": v.stage, "kind": v.kind, "created": v.created, "parent": v.parent,
             "holdout_score": _score(v)} for v in versions]
    result: dict[str, Any] = {"command": "models list", "registry": args.registry, "versions": rows,
                              "ab": None if test is None else test.to_dict()}
    result["_summary"] = [f"{args.registry}: {len(rows)} version(s)", *map(_line, versions)]
    if test is not None:
        result["_summary"].append(f"A/B test {test.id}: {test.version} serves {test.share:.0%} of the agents")
    return result


def run_show(args: argparse.Namespace) -> dict[str, Any]:
    info = _registry(args).get(args.ref)
    result: dict[str, Any] = {"command": "models show", "registry": args.registry, **info.to_dict()}
    holdout = info.holdout
    result["_summary"] = [
        f"{args.registry}: version {info.version} ({info.stage}, {info.kind} model), created {info.created}",
        f"parent {info.parent or '-'}, data {info.data_fingerprint or '-'}",
        "holdout: none" if holdout is None else
        f"holdout score {_score(info)} vs production {holdout.get('production_version') or '-'}, "
        f"better: {holdout['better']}",
        f"lineage {json.dumps(info.lineage, sort_keys=True)}"]
    return result


def run_promote(args: argparse.Namespace) -> dict[str, Any]:
    from serving.ab_gate import live_comparison
    from worldmodel.registry_store import RegistryError

    registry = _registry(args)
    test, reason = registry.ab(), None
    if args.stage == "production" and test is not None and registry.get(args.version).version == test.version:
        comparison = live_comparison(registry)  # gated by its live metrics while its test runs
        if comparison.problem() is not None and not args.force:
            raise RegistryError(comparison.refusal())
        if comparison.problem() is not None:
            reason = f"forced over live A/B test {test.id}: {comparison.problem()}"
    info = registry.promote(args.version, args.stage, force=args.force, reason=reason)
    result: dict[str, Any] = {"command": "models promote", "registry": args.registry, "version": info.version,
                              "stage": info.stage, "forced": args.force, "overrode": reason}
    result["_summary"] = [f"{args.registry}: {info.version} is now {info.stage}" + (" (forced)" if args.force
                                                                                     else "")]
    return result


def run_ab(args: argparse.Namespace) -> dict[str, Any]:
    from cluster.cli import UsageError

    if args.end == (args.version is not None) or (args.share is None) != args.end:
        raise UsageError("wm models ab: give VERSION --share FRACTION to start or change a test, or --end alone")
    registry = _registry(args)
    result: dict[str, Any] = {"command": "models ab", "registry": args.registry}
    if args.end:
        ended = registry.end_ab()
        result |= {"ended": None if ended is None else ended.to_dict(), "test": None}
        result["_summary"] = [f"{args.registry}: " + ("no A/B test was running" if ended is None else
                                                      f"A/B test {ended.id} of {ended.version} ended")]
        return result
    test = registry.start_ab(args.version, args.share)
    result |= {"ended": None, "test": test.to_dict()}
    result["_summary"] = [f"{args.registry}: A/B test {test.id}: {test.version} serves {test.share:.0%} of the "
                          f"agents beside production {test.production or 'unset'}"]
    return result


def run_compare(args: argparse.Namespace) -> dict[str, Any]:
    from serving.ab_gate import live_comparison, summary_lines

    comparison = live_comparison(_registry(args))
    result: dict[str, Any] = {"command": "models compare", "registry": args.registry, **comparison.to_dict()}
    result["_summary"] = summary_lines(comparison)
    return result


def run_rollback(args: argparse.Namespace) -> dict[str, Any]:
    registry = _registry(args)
    info = registry.rollback()
    previous = registry.history()[-1]["from"]
    result: dict[str, Any] = {"command": "models rollback", "registry": args.registry, "version": info.version,
                              "stage": info.stage, "archived": previous}
    result["_summary"] = [f"{args.registry}: production rolled back from {previous} to {info.version}"]
    return result


def run_register(args: argparse.Namespace) -> dict[str, Any]:
    from worldmodel.artifact import check_version
    from worldmodel.registry_kinds import kind_of, load
    from worldmodel.registry_kinds import manifest as read_manifest
    from worldmodel.registry_store import RegistryError

    model = load(args.model_dir)  # either kind: format, every file's checksum, the config, weights that fit it
    manifest = read_manifest(args.model_dir)
    try:
        check_version(manifest["version"])
    except ValueError as err:
        raise ValueError(f"{args.model_dir}: manifest {err}") from None
    registry = _registry(args)
    digest = _digest(manifest)
    same = [v.version for v in registry.versions() if v.lineage.get("artifact_digest") == digest]
    if same:
        raise RegistryError(f"{args.model_dir} is already registered in {args.registry} as version {same[0]}")
    lineage = {"source": str(Path(args.model_dir).absolute()), "artifact_version": manifest["version"],
               "artifact_created": manifest.get("created"), "artifact_digest": digest}
    info = registry.register(model, parent=args.parent, lineage=lineage, stage=args.stage)
    result: dict[str, Any] = {"command": "models register", "registry": args.registry, "version": info.version,
                              "stage": info.stage, "kind": kind_of(model), "parent": info.parent,
                              "artifact_version": manifest["version"],
                              "artifact_digest": digest, "data_fingerprint": info.data_fingerprint}
    result["_summary"] = [f"{args.registry}: {args.model_dir} ({info.kind} artifact {manifest['version']}) "
                          f"registered as {info.version} ({info.stage}), parent {info.parent or '-'}"]
    return result


def _digest(manifest: dict[str, Any]) -> str:
    """The artifact's identity: its files' checksums (the version and creation time it was saved with aside)."""
    files = "".join(f"{name}\0{sha}\n" for name, sha in sorted(manifest["files"].items()))
    return "sha256:" + hashlib.sha256(files.encode()).hexdigest()
