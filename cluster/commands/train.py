"""`wm train`: dynamics, reward and termination models from trajectory logs, saved as an artifact.

Image logs (`wm collect --env PixelNav2D-v0`) train the latent world model instead (``worldmodel.latent``, with
``train_latent``'s defaults) and write a latent artifact (``worldmodel.latent_artifact``); the vector model's
architecture options do not apply to it, ``--latent-config`` and ``--latent-steps`` / ``--cpu-seconds`` do.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from worldmodel.config import (ACTIVATIONS, DYNAMICS_KINDS, UNCERTAINTY_KINDS, ModelConfig, TrainConfig,
                               default_dynamics)


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
    p.add_argument("--latent-config", default=None, metavar="JSON",
                   help="image logs only: LatentConfig fields as a JSON object, e.g. '{\"members\": 3}' "
                        "(image shape and action size come from the logs)")
    p.add_argument("--latent-steps", type=int, default=None,
                   help="image logs only: gradient steps (default: LatentTrainConfig's)")
    p.add_argument("--cpu-seconds", type=float, default=None,
                   help="image logs only: stop training after this much CPU time, each worker's with --workers "
                        "(default: no limit)")
    p.add_argument("--workers", type=int, default=None,
                   help="image logs only: train data-parallel on N Ray Train workers (a CPU each), each reading "
                        "its share of the episodes through Ray Data (default: in this process, without Ray)")
    p.add_argument("--address", default=None,
                   help="with --workers: Ray cluster address (default: an embedded local Ray); --data must then "
                        "be readable from every node, and --storage given")
    p.add_argument("--storage", default=None,
                   help="with --workers: where Ray Train keeps the run, shared by every node (s3://..., a shared "
                        "mount; default: a temporary directory here, enough for a local Ray)")
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
    p.add_argument("--uncertainty", choices=UNCERTAINTY_KINDS, default=model.uncertainty,
                   help="members of the ensemble dynamics: independent nets or MC-dropout masks (default: %(default)s)")
    p.add_argument("--dropout", type=float, default=model.dropout, help="mc_dropout rate (default: %(default)s)")
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
    model_cfg = ModelConfig(dynamics=dynamics, ensemble_size=args.ensemble_size, hidden=args.hidden, layers=args.layers,
                            reward_hidden=args.reward_hidden or args.hidden,
                            reward_layers=args.reward_layers or args.layers, activation=args.activation,
                            uncertainty=args.uncertainty, dropout=args.dropout)
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
    fs, _, files = require_log_files(args.data)
    env_id = args.env or read_env_id(args.data, files=files)
    if not env_id:
        raise ValueError(f"the logs under {args.data} record no env id; pass --env")
    if has_frames(files, fs):
        return run_train_latent(args, files, env_id)
    given = [flag for flag, value in (("--latent-config", args.latent_config), ("--latent-steps", args.latent_steps),
                                      ("--cpu-seconds", args.cpu_seconds), ("--workers", args.workers),
                                      ("--address", args.address), ("--storage", args.storage))
             if value is not None]
    if given:
        raise ValueError(f"{given[0]} is for image logs only; the logs under {args.data} hold no camera frames")
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


def has_frames(files: list[str], filesystem: Any) -> bool:
    """Whether the first log file holds camera frames (its metadata records their shape)."""
    import pyarrow.dataset as ds

    from worldmodel.data.images import read_image_shape

    physical = ds.ParquetFileFormat().make_fragment(files[0], filesystem=filesystem).physical_schema
    return read_image_shape(physical.metadata) is not None


HELD_OUT_SHARE = 0.1
"""Share of the episodes (at least one, when there are two or more) kept out of latent training to report on."""
HELD_OUT_BATCHES = 8
"""Batches of held-out sub-sequences the latent diagnostics average over."""


def run_train_latent(args: argparse.Namespace, files: list[str], env_id: str) -> dict[str, Any]:
    """`wm train` on image logs: the latent world model, fitted on all but the held-out episodes, saved as a
    latent artifact with the held-out loss parts as its metrics."""
    import dataclasses
    import json
    import logging

    import torch

    from worldmodel.data import data_fingerprint
    from worldmodel.data import schema as sc
    from worldmodel.data.images import image_log_dataset, read_image_transitions
    from worldmodel.latent import LatentWorldModel
    from worldmodel.latent_artifact import LatentArtifact, latent_config_from_dict, save_latent_model
    from worldmodel.latent_training import LatentTrainConfig, episodes_from_logs, train_latent

    try:
        overrides = json.loads(args.latent_config or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"--latent-config must be a JSON object, got {args.latent_config!r} ({err})") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"--latent-config must be a JSON object, got {args.latent_config!r}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    for flag, value in (("--address", args.address), ("--storage", args.storage)):
        if value is not None and args.workers is None:
            raise ValueError(f"{flag} is for data-parallel training (--workers N)")
    if args.address not in (None, "", "local") and args.storage is None:
        raise ValueError("--address needs --storage: the workers on other nodes write the trained weights where "
                         "this command can read them (s3://BUCKET/PATH or a shared mount)")
    dataset, shape = image_log_dataset(args.data, files=files)
    act_dim = dataset.schema.field(sc.ACTIONS).type.list_size
    cfg = latent_config_from_dict({**overrides, "image_shape": shape, "act_dim": act_dim})
    train_cfg = LatentTrainConfig(**{k: v for k, v in (("steps", args.latent_steps), ("cpu_seconds", args.cpu_seconds),
                                                        ("seed", args.seed)) if v is not None})
    verbose = not (args.json or args.quiet)
    log = (lambda m: print(m, file=sys.stderr)) if verbose else (lambda m: None)
    parallel = None
    if args.workers is None:
        data = read_image_transitions(args.data, files=files)
        train, held = split_episodes(episodes_from_logs(data), HELD_OUT_SHARE)
        log(f"training the latent model on {len(train)} episodes ({len(held)} held out), {len(data)} frames "
            f"of {data.image_shape}")
        torch.manual_seed(train_cfg.seed)
        model = LatentWorldModel(cfg)
        report = train_latent(model, train, train_cfg, on_log=lambda step, cpu, parts: log(
            f"step {step}: cpu {cpu:.0f} s, " + ", ".join(f"{k} {v:.4f}" for k, v in parts.items())))
        trained_on = len(train)
    else:
        from cluster.runtime import init_ray
        from learners.latent_train import train_latent_data_parallel

        init_ray(args.address, log_to_driver=verbose)
        if not verbose:  # Ray Data's progress lines
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        log(f"training the latent model on {args.workers} Ray Train workers (Ray Data reads each one's episodes)")
        run = train_latent_data_parallel(args.data, files, cfg, train_cfg, args.workers, HELD_OUT_SHARE,
                                         storage=args.storage)
        model, report, held, trained_on = run.model, run.report, run.held, sum(run.episodes_per_worker)
        parallel = {"workers": args.workers, "episodes_per_worker": run.episodes_per_worker,
                    "workers_agree": run.workers_agree}
    metrics = {"steps": report.steps, "train_seconds": round(report.seconds, 2),
               "cpu_seconds": round(report.cpu_seconds, 2), "train_losses": report.losses,
               "held_out": held_out_losses(model, held, train_cfg) if held is not None else {},
               "episodes": trained_on, "held_out_episodes": len(held) if held is not None else 0,
               "breach_flags": report.breach_flags,
               **({"data_parallel": parallel} if parallel else {})}
    artifact = LatentArtifact(model, version=args.version, env_id=env_id,
                              data_fingerprint=data_fingerprint(args.data, files=files),
                              train=dataclasses.asdict(train_cfg), metrics=metrics)
    out = save_latent_model(artifact, args.out, overwrite=args.force)
    result = {"command": "train", "kind": "latent", "model_dir": str(out), "version": args.version, "env": env_id,
              "data_fingerprint": artifact.data_fingerprint, "seconds": metrics["train_seconds"], "metrics": metrics}
    held_text = ", ".join(f"{k} {v:.4f}" for k, v in metrics["held_out"].items()) or "no held-out episodes"
    result["_summary"] = [f"wrote latent model {out} (v{args.version}) in {result['seconds']} s "
                          f"({report.steps} steps); held out: {held_text}"]
    if not report.breach_flags:  # logs from before the violations column, or an env that reports none
        result["_summary"].append("warning: the logs carry no geofence-breach flags (`violations`): the breach "
                                  "head learned nothing; collect them again with this version's `wm collect`")
    return result


def split_episodes(episodes: Any, share: float) -> tuple[Any, Any]:
    """(training, held-out) Episodes: the last ``share`` of them (at least one of two or more) held out."""
    from worldmodel.latent_training import Episodes, held_out_count

    count = len(episodes)
    cut = count - held_out_count(count, share)
    part = lambda s: Episodes(episodes.frames[s], episodes.actions[s], episodes.rewards[s],  # noqa: E731
                              episodes.breach[s], episodes.lengths[s])
    return part(slice(0, cut)), part(slice(cut, count))


def held_out_losses(model: Any, held: Any, cfg: Any) -> dict[str, float]:
    """The training loss's parts (consistency, reward, breach) on held-out episodes, in eval mode, averaged over
    ``HELD_OUT_BATCHES`` seeded batches; empty without held-out episodes."""
    import numpy as np
    import torch

    from worldmodel.latent_training import loss_for, sample_for

    if len(held) == 0:
        return {}
    rng, sums = np.random.default_rng(cfg.seed + 1), {}
    model.eval()
    with torch.no_grad():
        for _ in range(HELD_OUT_BATCHES):
            for k, v in loss_for(model, sample_for(model, held, cfg, rng), cfg)[1].items():
                sums[k] = sums.get(k, 0.0) + v / HELD_OUT_BATCHES
    return {k: round(v, 6) for k, v in sums.items()}
