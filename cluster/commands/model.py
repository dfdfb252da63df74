"""`wm collect`, `wm train`, `wm info`: logs in, world models out."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from cluster.commands.report import plot_training
from worldmodel.artifact import check_version, load_model, save_model
from worldmodel.config import DYNAMICS_KINDS, ModelConfig, TrainConfig
from worldmodel.data import TrajectoryWriter, data_fingerprint, read_env_id, read_transitions, require_log_files
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.collect import collect
from worldmodel.training import train_world_model


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("collect", parents=[common], help="run a policy in an env and write trajectory logs")
    p.add_argument("--env", required=True, help="gymnasium id, e.g. Nav2D-v0 or Pendulum-v1")
    p.add_argument("--episodes", type=int, required=True, help="episodes to collect")
    p.add_argument("--out", required=True, help="log directory or URI (appended to)")
    p.add_argument("--policy", default="random", help="behaviour policy (random)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--agent-id", default="agent-0000", help="agent id written with every row")
    p.add_argument("--no-fly-zones", type=int, default=0, metavar="Z", help="Nav2D only: zones per episode")
    p.set_defaults(handler=run_collect)

    p = sub.add_parser("train", parents=[common], help="train dynamics + reward models from logs")
    p.add_argument("--data", required=True, help="log directory or URI")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--env", default=None, help="gymnasium id (default: the one recorded in the logs)")
    add_model_options(p)
    p.add_argument("--device", default=TrainConfig.device, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--version", default="0.1.0", help="semantic version of the artifact")
    p.add_argument("--force", action="store_true", help="replace an existing model directory")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(handler=run_train)

    p = sub.add_parser("info", parents=[common], help="show a model directory's version, config and metrics")
    p.add_argument("model_dir")
    p.set_defaults(handler=run_info)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Architecture and fitting options shared by `wm train` and `wm learn`."""
    p.add_argument("--dynamics", choices=DYNAMICS_KINDS, default=ModelConfig.dynamics)
    p.add_argument("--ensemble-size", type=int, default=ModelConfig.ensemble_size)
    p.add_argument("--hidden", type=int, default=ModelConfig.hidden)
    p.add_argument("--layers", type=int, default=ModelConfig.layers)
    p.add_argument("--activation", choices=["relu", "silu", "hardswish"], default=ModelConfig.activation)
    p.add_argument("--reward-hidden", type=int, default=None, help="reward/termination width (default: --hidden)")
    p.add_argument("--reward-layers", type=int, default=None, help="reward/termination depth (default: --layers)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--patience", type=int, default=TrainConfig.patience)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)


def configs_from_args(args: argparse.Namespace, device: str = TrainConfig.device) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configs the options of ``add_model_options`` describe."""
    model_cfg = ModelConfig(dynamics=args.dynamics, ensemble_size=1 if args.dynamics == "gru" else
                            args.ensemble_size, hidden=args.hidden, layers=args.layers,
                            reward_hidden=args.reward_hidden or args.hidden,
                            reward_layers=args.reward_layers or args.layers, activation=args.activation)
    train_cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                            seed=args.seed, device=device)
    return model_cfg, train_cfg


def run_collect(args: argparse.Namespace) -> dict[str, Any]:
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    env_kwargs = {"num_no_fly_zones": args.no_fly_zones} if args.no_fly_zones else None
    start = time.perf_counter()
    data = collect(args.env, args.episodes, seed=args.seed, policy=args.policy, agent_id=args.agent_id,
                   env_kwargs=env_kwargs, progress=not args.json)
    files = TrajectoryWriter(args.out, env_id=args.env).write(data)
    ends = data.terminateds | data.truncateds
    result = {
        "command": "collect", "env": args.env, "policy": args.policy, "seed": args.seed,
        "episodes": int(ends.sum()), "transitions": len(data), "files": len(files), "out": args.out,
        "mean_return": float(data.rewards.sum() / max(ends.sum(), 1)),
        "terminated_episodes": int(data.terminateds.sum()), "seconds": round(time.perf_counter() - start, 3),
    }
    result["_summary"] = [f"collected {result['episodes']} episodes ({len(data)} transitions) of {args.env} "
                          f"into {len(files)} file(s) under {args.out}",
                          f"mean return {result['mean_return']:.2f}"]
    return result


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    check_version(args.version)
    if Path(args.out).exists() and not args.force:
        raise FileExistsError(f"{args.out} already exists; pass --force to replace it")
    # Listed once, so the fingerprint covers exactly the files read (and a remote tree is listed once).
    files = require_log_files(args.data)[2]
    env_id = args.env or read_env_id(args.data, files=files)
    if not env_id:
        raise ValueError(f"the logs under {args.data} record no env id; pass --env")
    spec = space_spec(make_env(env_id), env_id)
    model_cfg, train_cfg = configs_from_args(args, device=args.device)
    data = read_transitions(args.data, files=files)
    verbose = not (args.json or args.quiet)
    log = (lambda m: print(m, file=sys.stderr)) if verbose else (lambda m: None)
    start = time.perf_counter()
    model = train_world_model(data, spec, model_cfg, train_cfg, progress=verbose, log=log)
    model.version, model.data_fingerprint = args.version, data_fingerprint(args.data, files=files)
    out = save_model(model, args.out, overwrite=args.force)
    png = plot_training(model.metrics, out / "training.png", title=f"{env_id} world model v{args.version}")
    result = {"command": "train", "model_dir": str(out), "version": model.version, "env": env_id,
              "data_fingerprint": model.data_fingerprint, "seconds": round(time.perf_counter() - start, 2),
              "png": str(png), "metrics": model.metrics}
    result["_summary"] = [f"wrote {out} (v{model.version}) in {result['seconds']} s; plots in {png}",
                          *summary_lines(model.metrics)]
    return result


def run_info(args: argparse.Namespace) -> dict[str, Any]:
    model = load_model(args.model_dir)
    result = {"command": "info", "model_dir": args.model_dir, "version": model.version,
              "data_fingerprint": model.data_fingerprint, "spec": model.spec.to_dict(),
              "model_config": model.model_config.to_dict(), "train_config": model.train_config.to_dict(),
              "metrics": model.metrics}
    result["_summary"] = [f"{args.model_dir}: {model.spec.env_id} world model v{model.version}",
                          f"data {model.data_fingerprint}",
                          f"model {model.model_config.to_dict()}", *summary_lines(model.metrics)]
    return result


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """The held-out numbers a person checks first."""
    dyn, rew, term = metrics["dynamics"], metrics["reward"], metrics.get("termination")
    fmt = lambda xs: "[" + ", ".join("-" if x is None else f"{x:.4f}" for x in xs) + "]"  # noqa: E731
    lines = [f"dynamics test R^2 per dim {fmt(dyn['r2'])}, of the change {fmt(dyn['r2_delta'])}"]
    if "coverage_2sigma_mean" in dyn:
        lines.append(f"dynamics coverage 1-sigma {dyn['coverage_1sigma_mean']:.3f}, "
                     f"2-sigma {dyn['coverage_2sigma_mean']:.3f}, NLL {dyn['nll']:.3f}")
    lines.append(f"reward test R^2 {rew['r2'][0]:.4f}")
    if term:
        lines.append(f"termination test accuracy {term['accuracy']:.4f}, recall {term['recall']:.3f}")
    return lines
