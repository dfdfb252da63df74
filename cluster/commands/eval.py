"""`wm eval`: closed-loop evaluation of a planner on a learned world model, all agents batched."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cluster.commands.eval_warehouse import Unset, add_warehouse_options, check_lone_agent_args, env_plan_defaults
from cluster.commands.plan import add_plan_options, plan_config, planner_settings
from planners.config import BREACH_WEIGHT, MODES, OBJECTIVES, EvalConfig, PlanConfig
from worldmodel.envs.nav2d import GOAL_DIMS, POS_DIMS

if TYPE_CHECKING:
    from planners.evaluate import EvalStep
    from worldmodel.model import WorldModel


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    # "resolve": ``env_plan_defaults`` adds --planner again, with the fleet planners among its choices.
    p = sub.add_parser("eval", parents=[common], conflict_handler="resolve")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--env", default=None, help="the env to evaluate on (default: the model's; it must be that one)")
    p.add_argument("--agents", type=int, default=EvalConfig.agents,
                   help="envs stepped and planned together (default: %(default)s)")
    p.add_argument("--episodes", type=int, default=EvalConfig.episodes, help="episodes counted (default: %(default)s)")
    p.add_argument("--objective", choices=OBJECTIVES, default=EvalConfig.objective,
                   help="plan for the model's learned reward, or Nav2D's goal reward (default: %(default)s)")
    p.add_argument("--no-fly-zones", type=int, nargs="?", const=2, default=Unset(EvalConfig.no_fly_zones), metavar="Z",
                   help="Nav2D: Z zones per episode (2 when given without a number; camera models: default the env's)")
    p.add_argument("--mode", choices=MODES, default=EvalConfig.mode,
                   help="plan, or act with the model's policy alone, shielded (default: %(default)s)")
    p.add_argument("--no-policy", action="store_true",
                   help="ignore the model's policy: the zero action falls back and nothing is its prior")
    p.add_argument("--prior-share", type=float, default=PlanConfig.prior_share, metavar="F",
                   help="share of each round's candidates that are the policy's rollouts (default: %(default)s)")
    p.add_argument("--no-shield", action="store_true",
                   help="do not check actions against the zones (Warehouse-v1: the shelves)")
    p.add_argument("--shield-horizon", type=int, default=EvalConfig.shield_horizon, metavar="HS",
                   help="steps the shield checks ahead (default: %(default)s)")
    p.add_argument("--breach-weight", type=float, default=BREACH_WEIGHT, metavar="W",
                   help="camera models: cost of a predicted geofence breach in the plans (default: %(default)s)")
    p.add_argument("--seed", type=int, default=EvalConfig.seed)
    p.add_argument("--device", default="auto")
    p.add_argument("--png", default=None,
                   help="write agents' paths (Nav2D) and planning latency, or the floor (Warehouse-v1), to this PNG")
    add_plan_options(p)
    env_plan_defaults(p)
    add_warehouse_options(p)
    p.set_defaults(handler=run_eval)


class _TrackRecorder:
    """Keeps the first episode of the first few agents (Nav2D positions) and every call's planning time."""

    def __init__(self, agents: int, nav2d: bool) -> None:
        self.agents, self.nav2d = agents, nav2d
        self.plan_ms: list[float] = []
        self.xy: list[list[np.ndarray]] = [[] for _ in range(agents)]
        self.closed = np.zeros(agents, bool)
        self.goal: list[np.ndarray] = [np.zeros(2)] * agents
        self.zones: list[np.ndarray] = [np.zeros((0, 3))] * agents

    def __call__(self, step: EvalStep) -> None:
        from planners.objectives import ZONES

        self.plan_ms.append(step.result.elapsed_ms)
        if not self.nav2d:
            return
        obs = step.obs[: self.agents].cpu().numpy()
        nxt = step.result.trajectory[: self.agents, 1].cpu().numpy()  # predicted next position
        for i in np.flatnonzero(~self.closed):
            if not self.xy[i]:
                self.goal[i] = obs[i, GOAL_DIMS]
                zones = step.params.get(ZONES)
                self.zones[i] = zones[i].cpu().numpy() if zones is not None else np.zeros((0, 3))
            self.xy[i].append(obs[i, POS_DIMS])
            if step.ended[i]:
                self.xy[i].append(nxt[i, POS_DIMS])
        self.closed |= step.ended[: self.agents]

    def finished(self) -> list[dict[str, Any]]:
        return [{"xy": np.asarray(xy), "goal": goal, "zones": zones}
                for xy, goal, zones in zip(self.xy, self.goal, self.zones) if xy]


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    from cluster.commands.eval_camera import run_camera
    from cluster.commands.eval_warehouse import run_warehouse
    from worldmodel.artifact import load_model
    from worldmodel.device import resolve_device
    from worldmodel.envs import WAREHOUSE_ID
    from worldmodel.latent_artifact import is_latent_model

    if is_latent_model(args.model):  # a camera model: PixelNav2D agents through the latent model
        return run_camera(args)
    if args.breach_weight != BREACH_WEIGHT:
        raise ValueError("--breach-weight is for camera (latent) models")
    model = load_model(args.model, device=resolve_device(args.device))
    env_id = model.spec.env_id
    if args.env is not None and args.env != env_id:
        raise ValueError(f"--env {args.env}: {args.model} is a model of {env_id or 'an unnamed env'}")
    if env_id == WAREHOUSE_ID:
        return run_warehouse(args, model)
    check_lone_agent_args(args, env_id)
    return _run_lone_agents(args, model)


def _run_lone_agents(args: argparse.Namespace, model: WorldModel) -> dict[str, Any]:
    """N lone agents in lockstep, planned for in one call per step."""
    from cluster.commands.report import plot_closed_loop
    from planners import resolved_settings
    from planners.evaluate import closed_loop
    from planners.policy_artifact import load_policy, policy_info
    from worldmodel.envs import NAV2D_ID

    cfg = EvalConfig(planner=args.planner, agents=args.agents, episodes=args.episodes, objective=args.objective,
                     no_fly_zones=args.no_fly_zones, mode=args.mode, shield=not args.no_shield,
                     shield_horizon=args.shield_horizon, seed=args.seed,
                     plan=dataclasses.replace(plan_config(args), prior_share=args.prior_share),
                     settings=planner_settings(args))
    policy = None if args.no_policy else load_policy(args.model, device=model.device)
    if policy is None and (args.mode == "policy" or args.prior_share > 0):
        why = "--no-policy was given" if args.no_policy else f"{args.model} has none (train one with `wm policy train`)"
        raise ValueError(f"--mode policy and --prior-share need the model's policy, but {why}")
    recorder = _TrackRecorder(agents=min(args.agents, 8), nav2d=model.spec.env_id == NAV2D_ID)
    res = closed_loop(model, cfg, progress=not args.json, on_step=recorder,
                      policy=None if policy is None else policy.act)
    out = {"command": "eval", "model": args.model, "env": model.spec.env_id, "planner": args.planner,
           "agents": args.agents, "objective": args.objective, "no_fly_zones": args.no_fly_zones,
           "mode": args.mode, "shield": cfg.shield, "shield_horizon": cfg.shield_horizon,
           "policy": (policy_info(args.model) or {}).get("version") if policy is not None else None,
           "seed": args.seed, "settings": dataclasses.asdict(cfg.plan),
           "planner_settings": resolved_settings(args.planner, cfg.settings),
           "device": str(model.device)}
    out |= {k: v for k, v in dataclasses.asdict(res).items() if k != "returns"}
    if args.png:
        out["png"] = str(plot_closed_loop(recorder.finished(), recorder.plan_ms, Path(args.png),
                                          f"{args.planner} on {model.spec.env_id}, {args.agents} agents"))
    out["_summary"] = [
        f"{args.planner} on {model.spec.env_id}: {res.episodes} episodes with {args.agents} agents",
        f"mean return {res.mean_return:.2f}, success {res.success_rate:.1%}, violations {res.violations} "
        f"(in {res.episodes_with_violation} episodes), fallbacks {res.fallbacks} "
        f"(to {'the policy' if policy is not None else 'the zero action'}), "
        f"shield interventions {res.shield_interventions}",
        f"planning {res.plan_ms_mean:.1f} ms/step (p99 {res.plan_ms_p99:.1f}), {res.plans_per_s:.0f} plans/s",
    ]
    return out
