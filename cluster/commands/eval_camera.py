"""`wm eval` on a camera model (a latent world model from pixels): PixelNav2D agents in closed loop through it.

`wm eval` dispatches here when ``--model`` is a latent artifact. ``--agents`` envs at a time are encoded and
planned for in one call per step (``planners.latent_eval.run_latent``) until ``--episodes`` have ended; episode
i resets with seed ``LatentEvalConfig.seed + --seed + i``, away from the seeds `wm collect` starts from. The
planner is the served one (CEM over the latent ensemble, scored by the reward and breach heads), with
``--horizon``, ``--samples`` and ``--iterations`` when given and ``--breach-weight`` the cost of a predicted
breach. The env is PixelNav2D at the model's image size, with ``--no-fly-zones`` zones (default: the env's).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from cluster.commands.eval_warehouse import ENV_DEPENDENT, Unset
from planners.config import EvalConfig, PlanConfig

_REFUSED = {"objective": EvalConfig.objective, "mode": EvalConfig.mode, "prior_share": PlanConfig.prior_share,
            "no_policy": False, "no_shield": False, "shield_horizon": EvalConfig.shield_horizon, "png": None,
            "robots": None, "ticks": None, "baseline_model": None, "gif": None, "planner_opt": []}
"""Options a camera model does not take, with the value that says they were not given."""


def run_camera(args: argparse.Namespace) -> dict[str, Any]:
    """`wm eval` for a latent (camera) model: success and zone steps over ``--episodes``; the result."""
    from planners.config import LATENT_PLAN
    from planners.latent_eval import LatentEvalConfig, run_latent
    from worldmodel.device import resolve_device
    from worldmodel.envs.camera import PixelNav2DEnv
    from worldmodel.latent_artifact import load_latent_model

    _check(args)
    artifact = load_latent_model(args.model, device=resolve_device(args.device))
    env_id = artifact.spec.env_id
    if args.env is not None and args.env != env_id:
        raise ValueError(f"--env {args.env}: {args.model} is a camera model of {env_id}")
    given = {k: int(getattr(args, k)) for k in ENV_DEPENDENT if not isinstance(getattr(args, k), Unset)}
    plan = dataclasses.replace(LATENT_PLAN, **given, seed=args.seed)
    env = {"image_size": artifact.model.cfg.image_shape[0]}
    if not isinstance(args.no_fly_zones, Unset):
        env["num_no_fly_zones"] = int(args.no_fly_zones)
    PixelNav2DEnv(**env)  # bad options are refused before minutes of planning
    cfg = LatentEvalConfig(episodes=args.episodes, agents=args.agents, seed=LatentEvalConfig.seed + args.seed,
                           plan=plan, breach_weight=args.breach_weight, env=env)
    say = (lambda line: None) if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    res = run_latent(artifact.model, cfg, progress=say)
    out = {"command": "eval", "kind": "latent", "model": args.model, "model_version": artifact.version,
           "env": env_id, "agents": args.agents, "episodes": len(res.success), "seed": args.seed,
           "first_episode_seed": cfg.seed, "settings": dataclasses.asdict(plan), "breach_weight": args.breach_weight,
           "env_options": env, "success_rate": res.success_rate, "zone_steps": int(res.zone_steps.sum()),
           "violation_episodes": res.violation_episodes, "mean_steps": float(res.steps.mean()),
           "ms_per_step": res.ms_per_step, "device": str(artifact.device)}
    out["_summary"] = [f"latent CEM on {env_id} from pixels: {res.summary()}"]
    return out


def _check(args: argparse.Namespace) -> None:
    """Refuse, naming them, the options a camera model does not take, and counts out of range."""
    for name, unset in _REFUSED.items():
        if getattr(args, name) != unset:
            raise ValueError(f"--{name.replace('_', '-')} is not taken for a camera (latent) model; it takes "
                             "--agents, --episodes, --no-fly-zones, --horizon, --samples, --iterations, "
                             "--breach-weight, --seed, --device")
    if args.planner != "cem":
        raise ValueError(f"--planner {args.planner}: a camera model plans with cem")
    for flag, value in (("--agents", args.agents), ("--episodes", args.episodes)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if not args.breach_weight >= 0:
        raise ValueError(f"--breach-weight must be >= 0, got {args.breach_weight}")
