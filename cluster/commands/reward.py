"""`wm reward train|register|list`: reward models fitted, versioned and registered apart from the dynamics.

A reward model is fitted on logs for the spaces of an existing world model (a directory, or a version or stage
of ``--registry``), without touching its dynamics; it is registered under ``<registry>/rewards/`` with a lineage
of its own ("r1.0.0", "r1.1.0", ...), and a request's ``reward_model`` or `wm serve --reward-model` names it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from worldmodel.config import ACTIVATIONS, ModelConfig, TrainConfig

_REGISTRY_HELP = "model registry directory or URI (reward models live under its rewards/)"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("reward", parents=[common], help="train, register and list reward models")
    # Nested subparsers take the parent's class, so their argparse errors become UsageError too.
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(p))

    a = actions.add_parser("train", parents=[common], help="fit a reward model on logs for a world model's spaces")
    a.add_argument("--data", required=True, help="log directory or URI: its (s, a, s', r) rows")
    a.add_argument("--model", required=True, metavar="VERSION_OR_DIR",
                   help="the world model whose spaces it reads: a model directory, or with --registry a version "
                        "or stage")
    a.add_argument("--registry", default=None, metavar="URI", help=_REGISTRY_HELP)
    a.add_argument("--out", default=None, metavar="DIR",
                   help="reward directory to write (default with --registry: register it there instead)")
    a.add_argument("--parent", default=None, metavar="VERSION", help="the reward version it is trained to replace")
    a.add_argument("--hidden", type=int, default=None, help="width (default: the world model's reward width)")
    a.add_argument("--layers", type=int, default=None, help="depth (default: the world model's reward depth)")
    a.add_argument("--activation", choices=ACTIVATIONS, default=None, help="(default: the world model's)")
    train = TrainConfig()
    a.add_argument("--epochs", type=int, default=train.epochs, help="(default: %(default)s)")
    a.add_argument("--batch-size", type=int, default=train.batch_size, help="(default: %(default)s)")
    a.add_argument("--lr", type=float, default=train.lr, help="(default: %(default)s)")
    a.add_argument("--patience", type=int, default=train.patience, help="(default: %(default)s)")
    a.add_argument("--seed", type=int, default=train.seed)
    a.add_argument("--device", default=train.device, help="auto, cpu, cuda, cuda:1, ...")
    a.add_argument("--force", action="store_true", help="replace an existing --out directory")
    a.add_argument("--quiet", action="store_true", help="no progress on stderr")
    a.set_defaults(handler=run_train)

    a = actions.add_parser("register", parents=[common], help="put a reward directory into the registry (verified)")
    a.add_argument("reward_dir", metavar="DIR")
    a.add_argument("--registry", required=True, metavar="URI", help=_REGISTRY_HELP)
    a.add_argument("--parent", default=None, metavar="VERSION", help="(default: the one its manifest names)")
    a.set_defaults(handler=run_register)

    a = actions.add_parser("list", parents=[common], help="every registered reward model, with its spaces and lineage")
    a.add_argument("--registry", required=True, metavar="URI", help=_REGISTRY_HELP)
    a.set_defaults(handler=run_list)


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    from worldmodel.data import data_fingerprint, read_env_id, read_transitions, require_log_files
    from worldmodel.reward_artifact import check_reward_version, save_reward
    from worldmodel.reward_registry import RewardRegistry
    from worldmodel.reward_training import train_reward_model

    if args.out is None and args.registry is None:
        raise ValueError("give --out DIR to write the reward model, or --registry URI to register it")
    if args.out is not None and Path(args.out).exists() and not args.force:
        raise FileExistsError(f"{args.out} already exists; pass --force to replace it")
    if args.parent is not None:
        check_reward_version(args.parent)
    spec, model_cfg, model_version = _world_model(args)
    files = require_log_files(args.data)[2]  # listed once: the fingerprint covers exactly the files read
    logged_env = read_env_id(args.data, files=files)
    if logged_env and logged_env != spec.env_id:
        raise ValueError(f"the logs under {args.data} are of {logged_env}; model {model_version} is of {spec.env_id}")
    verbose = not (args.json or args.quiet)
    log = (lambda m: print(m, file=sys.stderr)) if verbose else (lambda m: None)
    start = time.perf_counter()
    artifact = train_reward_model(read_transitions(args.data, files=files), spec, _reward_config(args, model_cfg),
                                  TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                              patience=args.patience, seed=args.seed, device=args.device),
                                  progress=verbose, log=log)
    artifact.model_version, artifact.parent, artifact.data_uri = model_version, args.parent, args.data
    artifact.data_fingerprint = data_fingerprint(args.data, files=files)
    where: dict[str, Any] = {}
    if args.out is not None:
        where["reward_dir"] = str(save_reward(artifact, args.out, overwrite=args.force))
    else:
        where["registry"] = args.registry
        RewardRegistry(args.registry).register(artifact)
    test = artifact.metrics["reward"]
    holdout = {"rows": test["rows"], "mse": test["mse"][0], "r2": test["r2_min"]}
    result = {"command": "reward train", "version": artifact.version, **where, "model_version": model_version,
              "env": spec.env_id, "data_fingerprint": artifact.data_fingerprint,
              "seconds": round(time.perf_counter() - start, 2), "holdout": holdout, "metrics": artifact.metrics}
    place = where.get("reward_dir") or f"registry {args.registry}"
    result["_summary"] = [f"reward model {artifact.version} for model {model_version} ({spec.env_id}) in {place}, "
                          f"{result['seconds']} s", f"holdout ({holdout['rows']} rows): mse {holdout['mse']:.4g}, "
                          f"R^2 {holdout['r2']}"]
    return result


def _world_model(args: argparse.Namespace) -> tuple[Any, ModelConfig, str]:
    """The spaces, config and version of ``--model`` (verified; its weights are not needed)."""
    from worldmodel.artifact import ArtifactError, read_json, verify
    from worldmodel.config import config_from_dict
    from worldmodel.envs import SpaceSpec
    from worldmodel.registry import ModelRegistry

    model_dir = ModelRegistry(args.registry).model_dir(args.model) if args.registry else Path(args.model)
    manifest = verify(model_dir)
    config = read_json(model_dir, "config.json")
    try:
        return SpaceSpec.from_dict(config["spec"]), config_from_dict(ModelConfig, config["model"]), manifest["version"]
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{model_dir / 'config.json'}: invalid config ({err})") from None


def check_served_reward(registry: str, model: str, version: str) -> None:
    """Raise unless reward model ``version`` is registered in ``registry`` and fits the spaces of ``model`` (a
    version or stage there): what `wm serve --reward-model` checks before it deploys."""
    from worldmodel.reward_artifact import RewardMismatch, check_reward_version
    from worldmodel.reward_registry import RewardRegistry

    info = RewardRegistry(registry).get(check_reward_version(version))
    spec, _, model_version = _world_model(argparse.Namespace(registry=registry, model=model))
    if not info.fits(spec):
        raise RewardMismatch(f"--reward-model {version} fits {info.spec['env_id']} with (S, A) = "
                             f"({info.spec['obs_dim']}, {info.spec['act_dim']}); model {model_version} has "
                             f"{spec.env_id} with ({spec.obs_dim}, {spec.act_dim})")


def _reward_config(args: argparse.Namespace, model_cfg: ModelConfig) -> Any:
    """The reward network: the world model's reward architecture unless an option says otherwise."""
    from worldmodel.reward_artifact import RewardConfig

    own = RewardConfig.of(model_cfg)
    return RewardConfig(hidden=args.hidden or own.hidden, layers=args.layers or own.layers,
                        activation=args.activation or own.activation)


def run_register(args: argparse.Namespace) -> dict[str, Any]:
    from worldmodel.reward_artifact import load_reward
    from worldmodel.reward_registry import RewardRegistry

    info = RewardRegistry(args.registry).register(load_reward(args.reward_dir), parent=args.parent)
    result: dict[str, Any] = {"command": "reward register", "registry": args.registry, **info.to_dict()}
    result["_summary"] = [f"{args.registry}: registered {args.reward_dir} as reward model {info.version} "
                          f"(parent {info.parent or '-'})"]
    return result


def run_list(args: argparse.Namespace) -> dict[str, Any]:
    from worldmodel.reward_registry import RewardRegistry

    versions = RewardRegistry(args.registry).versions()
    rows = [{"version": v.version, "created": v.created, "parent": v.parent, "model_version": v.model_version,
             "env_id": v.spec["env_id"], "obs_dim": v.spec["obs_dim"], "act_dim": v.spec["act_dim"],
             "r2": (v.metrics.get("reward") or {}).get("r2_min")} for v in versions]
    lines = [f"{r['version']:>10}  {r['env_id']} (S={r['obs_dim']}, A={r['act_dim']})  parent {r['parent'] or '-'}  "
             f"fitted for {r['model_version'] or '-'}  holdout R^2 {r['r2']}" for r in rows]
    result: dict[str, Any] = {"command": "reward list", "registry": args.registry, "versions": rows}
    result["_summary"] = [f"{args.registry}: {len(rows)} reward model(s)", *lines]
    return result
