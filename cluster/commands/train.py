"""`wm train`: dynamics, reward and termination models from trajectory logs, saved as an artifact."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from worldmodel.config import ACTIVATIONS, DYNAMICS_KINDS, ModelConfig, TrainConfig, default_dynamics


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("train", parents=[common])
    p.add_argument("--data", required=True, help="log directory or URI")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--env", default=None, help="gymnasium id (default: the one recorded in the logs)")
    add_model_options(p, dynamics_by_env=True)
    p.add_argument("--device", default=TrainConfig.device, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--version", default="0.1.0", help="semantic version of the artifact")
    p.add_argument("--force", action="store_true", help="replace an existing model directory")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(handler=run_train)


def add_model_options(p: argparse.ArgumentParser, model: ModelConfig = ModelConfig(),
                      train: TrainConfig = TrainConfig(), dynamics_by_env: bool = False) -> None:
    """Architecture and fitting options shared by `wm train`, `wm learn` and `wm mbrl`, defaulting to
    ``model``'s and ``train``'s fields (``ModelConfig()``'s and ``TrainConfig()``'s unless a command
    has its own); with ``dynamics_by_env`` no ``--dynamics`` means the env's default kind (None here,
    resolved by ``configs_from_args`` once the env is known)."""
    if dynamics_by_env:
        p.add_argument("--dynamics", choices=DYNAMICS_KINDS, default=None,
                       help=f"(default: fleet for fleet envs' logs, else {model.dynamics})")
    else:
        p.add_argument("--dynamics", choices=DYNAMICS_KINDS, default=model.dynamics)
    p.add_argument("--ensemble-size", type=int, default=model.ensemble_size, help="(default: %(default)s)")
    p.add_argument("--hidden", type=int, default=model.hidden, help="dynamics width (default: %(default)s)")
    p.add_argument("--layers", type=int, default=model.layers, help="dynamics depth (default: %(default)s)")
    p.add_argument("--activation", choices=ACTIVATIONS, default=model.activation)
    p.add_argument("--reward-hidden", type=int, default=None, help="reward/termination width (default: --hidden)")
    p.add_argument("--reward-layers", type=int, default=None, help="reward/termination depth (default: --layers)")
    p.add_argument("--epochs", type=int, default=train.epochs, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=train.batch_size, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=train.lr, help="(default: %(default)s)")
    p.add_argument("--patience", type=int, default=train.patience, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=train.seed)


def configs_from_args(args: argparse.Namespace, device: str = TrainConfig.device,
                      env_id: str | None = None) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configs the options of ``add_model_options`` describe (the reward nets
    take the dynamics' size unless their own options are given, as in ``ModelConfig``'s defaults; no
    ``--dynamics`` means ``env_id``'s default kind)."""
    dynamics = args.dynamics or default_dynamics(env_id)
    model_cfg = ModelConfig(dynamics=dynamics, ensemble_size=1 if dynamics == "gru" else
                            args.ensemble_size, hidden=args.hidden, layers=args.layers,
                            reward_hidden=args.reward_hidden or args.hidden,
                            reward_layers=args.reward_layers or args.layers, activation=args.activation)
    train_cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                            seed=args.seed, device=device)
    return model_cfg, train_cfg


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    from cluster.commands.info import summary_lines
    from cluster.commands.report import plot_training
    from worldmodel.artifact import check_version, save_model
    from worldmodel.data import data_fingerprint, read_env_id, read_transitions, require_log_files
    from worldmodel.envs import make_env, space_spec
    from worldmodel.training import train_world_model

    check_version(args.version)
    if Path(args.out).exists() and not args.force:
        raise FileExistsError(f"{args.out} already exists; pass --force to replace it")
    # Listed once, so the fingerprint covers exactly the files read (and a remote tree is listed once).
    files = require_log_files(args.data)[2]
    env_id = args.env or read_env_id(args.data, files=files)
    if not env_id:
        raise ValueError(f"the logs under {args.data} record no env id; pass --env")
    spec = space_spec(make_env(env_id), env_id)
    model_cfg, train_cfg = configs_from_args(args, device=args.device, env_id=env_id)
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
