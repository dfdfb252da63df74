"""`wm mbrl`: the PETS model-based RL loop on one env, with a learning-curve PNG.

Its defaults are the loop's own (``planners.config.PETS_PLAN``, ``PETS_MODEL``, ``PETS_TRAIN``): a
bigger model (5 x 200x3, SiLU) and more planning per step than the fleet-serving defaults, tuned on
Pendulum-v1 (``benchmarks/pendulum_mbrl.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.commands.train import add_model_options, configs_from_args
from planners.config import PETS_MODEL, PETS_PLAN, PETS_TRAIN, PLANNER_NAMES, PROPAGATIONS, MBRLConfig, PlanConfig

if TYPE_CHECKING:
    from planners.mbrl import EpisodeRow, MBRLResult


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("mbrl", parents=[common])
    p.add_argument("--env", required=True, help="gymnasium id, e.g. Pendulum-v1, or module:Id")
    p.add_argument("--episodes", type=int, required=True, help="total episodes, random ones included")
    p.add_argument("--random-episodes", type=int, default=MBRLConfig.random_episodes,
                   help="random episodes before the first model (default: %(default)s)")
    p.add_argument("--planner", choices=list(PLANNER_NAMES), default=MBRLConfig.planner, help="(default: %(default)s)")
    p.add_argument("--horizon", type=int, default=PETS_PLAN.horizon, help="(default: %(default)s)")
    p.add_argument("--samples", type=int, default=PETS_PLAN.samples, help="K candidates per iteration "
                   "(default: %(default)s)")
    p.add_argument("--iterations", type=int, default=PETS_PLAN.iterations, help="(default: %(default)s)")
    p.add_argument("--elites", type=int, default=None, help="CEM elites (default: 10%% of --samples)")
    p.add_argument("--particles", type=int, default=PETS_PLAN.particles)
    p.add_argument("--propagation", choices=PROPAGATIONS, default=PETS_PLAN.propagation)
    add_model_options(p, PETS_MODEL, PETS_TRAIN)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is fastest for these small models on a busy machine)")
    p.add_argument("--eval-episodes", type=int, default=MBRLConfig.eval_episodes,
                   help="episodes run at the end by the final model, not learned from (scores the agent)")
    p.add_argument("--target-return", type=float, default=MBRLConfig.target_return,
                   help="report the env steps to reach it")
    p.add_argument("--out", default=None, help="run directory (default runs/mbrl-<env>-<time>)")
    p.set_defaults(handler=run_mbrl_cmd)


def run_mbrl_cmd(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from planners.mbrl import run_mbrl

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/mbrl-{args.env.replace(':', '_')}-{time.strftime('%Y%m%d-%H%M%S')}")
    logs = out / "logs"
    if logs.exists():
        raise FileExistsError(f"{logs} already exists; pass another --out or remove it")
    cfg = mbrl_config(args)
    say = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    say(f"mbrl on {args.env}: {args.random_episodes} random + {args.episodes - args.random_episodes} planned "
        f"episodes ({args.planner}); writing {out}")
    res = run_mbrl(cfg, log_dir=str(logs), progress=not args.json, on_episode=lambda row: say(episode_line(row)))
    out.mkdir(parents=True, exist_ok=True)
    png = plot_learning_curve(res, out / "learning_curve.png")
    result = {"command": "mbrl", "out": str(out), "png": str(png), "logs": str(logs)} | res.to_dict()
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    reached = (f"target {res.target_return:g} reached after {res.steps_to_target} env steps"
               if res.steps_to_target is not None else
               f"target {res.target_return:g} not reached" if res.target_return is not None else None)
    evaluated = ([f"final model over {len(res.evals)} eval episodes: mean return {res.eval_mean_return:.2f}"]
                 if res.evals else [])
    result["_summary"] = [*(episode_line(r) for r in res.rows + res.evals), *evaluated, *([reached] if reached else []),
                          f"done in {res.seconds:.1f} s; learning curve {png}"]
    return result


def mbrl_config(args: argparse.Namespace) -> MBRLConfig:
    """The loop's settings, built once from the flags (``--seed`` seeds the planner too)."""
    from planners.mbrl import pets_cem

    plan = PlanConfig(horizon=args.horizon, samples=args.samples, iterations=args.iterations,
                      propagation=args.propagation, particles=args.particles, seed=args.seed)
    model, train = configs_from_args(args, device=args.device)
    cem = pets_cem(args.samples, args.elites) if args.elites is not None else None
    return MBRLConfig(args.env, args.episodes, planner=args.planner, random_episodes=args.random_episodes,
                      eval_episodes=args.eval_episodes, plan=plan, model=model, train=train, cem=cem, seed=args.seed,
                      target_return=args.target_return)


def episode_line(row: EpisodeRow) -> str:
    """One episode for people; a held-out R^2 that is undefined (a constant target) reads 'n/a'."""
    r2 = "n/a" if row.model_r2_min is None else f"{row.model_r2_min:.3f}"
    extra = "" if row.kind == "random" else (f"  (train {row.train_seconds:.1f} s, "
                                             f"plan {row.plan_ms_mean:.0f} ms/step, model R^2 min {r2})")
    return f"episode {row.index} {row.kind:7s} env steps {row.env_steps:6d}  return {row.ret:9.2f}{extra}"


def plot_learning_curve(res: MBRLResult, path: Path) -> Path:
    """Return of each episode against the env steps used so far, random episodes marked apart."""
    from cluster.commands.report import plt, save_figure  # pyplot with the files-only backend set
    from planners.mbrl import EVAL, PLANNED, RANDOM

    fig, ax = plt.subplots(figsize=(7, 4))
    steps, returns = [r.env_steps for r in res.rows], [r.ret for r in res.rows]
    ax.plot(steps, returns, color="C0", lw=1, zorder=1)
    shift = 0.03 * steps[-1]  # eval episodes sit at the final step count; offset so they do not hide the last one
    for kind, marker, dx in ((RANDOM, "x", 0.0), (PLANNED, "o", 0.0), (EVAL, "_", shift)):
        pts = [(r.env_steps + dx, r.ret) for r in res.rows + res.evals if r.kind == kind]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, s=80 if kind == EVAL else 36, label=kind, zorder=2)
    if res.evals:
        ax.scatter([steps[-1] + shift], [res.eval_mean_return], marker="*", s=160, color="C3",
                   label=f"eval mean {res.eval_mean_return:.0f}", zorder=3)
    if res.target_return is not None:
        ax.axhline(res.target_return, color="k", ls="--", lw=0.8, label=f"target {res.target_return:g}")
    ax.set(title=f"{res.env_id}: PETS with learned dynamics and reward", xlabel="env steps", ylabel="episode return")
    ax.legend(loc="best")
    return save_figure(fig, path)
