"""`wm eval` on Warehouse-v1: a fleet planner drives every robot of one floor at 10 Hz, the floor counts.

`wm eval` dispatches here when the model was trained on Warehouse-v1. The coordinated planner rolls
all robots out through a fleet model, each robot's samples against the others' plans; the baselines plan each robot through a per-agent model
(``planners.fleet_baselines``). With ``--baseline-model`` both baselines run after the coordinated
planner, on the same floor, seed and tasks. The coordinated planner's plans go through the fleet shield
(``planners.fleet_shield``) unless ``--no-shield``; the baselines run as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cluster.commands.collect import DEFAULT_ROBOTS, GIF_FRAMES
from cluster.commands.plan import DEFAULTS
from planners.config import DEFAULT_PLANNER, PLANNER_NAMES, EvalConfig

if TYPE_CHECKING:
    import torch

    from planners.fleet_cem import FleetCEM, FleetPlan, FleetPlanConfig
    from planners.fleet_rollout import FloorState
    from planners.fleet_shield import FleetShield
    from planners.warehouse_costs import WarehouseCosts
    from planners.warehouse_eval import FleetEvalResult
    from worldmodel.envs.warehouse import WarehouseFloor
    from worldmodel.envs.warehouse_layout import Layout
    from worldmodel.model import WorldModel

COORDINATED, INDEPENDENT, CONSTANT_VELOCITY = "coordinated", "independent", "constant-velocity"
FLEET_PLANNERS = (COORDINATED, INDEPENDENT, CONSTANT_VELOCITY)
"""`--planner` on Warehouse-v1: joint planning through a fleet model, baselines (a) and (b) through a per-agent one."""
BASELINES = (INDEPENDENT, CONSTANT_VELOCITY)
_LONE_AGENT_OPTIONS = {"agents": EvalConfig.agents, "episodes": EvalConfig.episodes, "objective": EvalConfig.objective,
                       "no_fly_zones": EvalConfig.no_fly_zones, "mode": EvalConfig.mode,
                       "prior_share": DEFAULTS.prior_share, "planner_opt": []}
"""The lone-agent options that mean nothing on a floor, with the value that says they were not given."""


class Unset(int):
    """An int option's default that says it was not given: lone agents read it as the number, a floor takes
    the fleet planner's own default instead."""


class UnsetName(str):
    """A str option's default that says it was not given (see ``Unset``)."""


ENV_DEPENDENT = ("horizon", "samples", "iterations")
"""Planner options whose defaults differ by env: ``PlanConfig``'s for lone agents, ``FleetPlanConfig``'s on a floor."""
_SHIELD_HORIZON = "shield_horizon"
"""`--shield-horizon`, whose default differs the same way (``EvalConfig``'s, ``FleetShieldConfig``'s)."""


def env_plan_defaults(p: argparse.ArgumentParser) -> None:
    """After ``add_plan_options``: --planner again (``p`` resolves conflicts) with the fleet planners among its
    choices, and the env-dependent defaults marked as not given."""
    p.add_argument("--planner", choices=[*PLANNER_NAMES, *FLEET_PLANNERS], default=UnsetName(DEFAULT_PLANNER),
                   help=f"(default: %(default)s; Warehouse-v1: {COORDINATED})")
    p.set_defaults(**{name: Unset(getattr(DEFAULTS, name)) for name in ENV_DEPENDENT})
    p.set_defaults(**{_SHIELD_HORIZON: Unset(EvalConfig.shield_horizon)})


def add_warehouse_options(p: argparse.ArgumentParser) -> None:
    """The options only Warehouse-v1 takes (None: not given)."""
    p.add_argument("--robots", type=int, default=None,
                   help=f"Warehouse-v1: robots on the floor (default: {DEFAULT_ROBOTS})")
    p.add_argument("--ticks", type=int, default=None,
                   help="Warehouse-v1: floor steps of 0.1 s run (default: one floor episode)")
    p.add_argument("--baseline-model", default=None, metavar="DIR",
                   help="Warehouse-v1: a per-agent model; the two baselines run through it after the coordinated "
                        "planner, on the same floor and tasks")
    p.add_argument("--gif", default=None, help="Warehouse-v1: animate the run")


def check_lone_agent_args(args: argparse.Namespace, env_id: str) -> None:
    """Refuse the Warehouse-v1 options for a model of another env."""
    for flag, value in (("--robots", args.robots), ("--ticks", args.ticks), ("--baseline-model", args.baseline_model),
                        ("--gif", args.gif)):
        if value is not None:
            raise ValueError(f"{flag} is for Warehouse-v1 models only, got a {env_id} model")
    if args.planner in FLEET_PLANNERS:
        raise ValueError(f"--planner {args.planner} is for Warehouse-v1 models, got a {env_id} model")


def check_model_kind(name: str, model: WorldModel, flag: str = "--model") -> None:
    """Raise ValueError, naming ``flag`` and both kinds, unless ``model`` fits fleet planner ``name``: a
    fleet model for 'coordinated', a per-agent ensemble or MLP for the baselines."""
    kind = model.model_config.dynamics
    if name not in FLEET_PLANNERS:
        raise ValueError(f"unknown fleet planner {name!r}; choose one of {', '.join(FLEET_PLANNERS)}")
    if name == COORDINATED and kind != "fleet":
        raise ValueError(f"{flag}: --planner {COORDINATED} needs a fleet model (`wm train --dynamics fleet`), got "
                         f"a '{kind}' model; pass it as --baseline-model, or use --planner {' or '.join(BASELINES)}")
    if name != COORDINATED and kind in ("fleet", "gru"):
        raise ValueError(f"{flag}: --planner {name} plans each robot through a per-agent model (`wm train "
                         f"--dynamics ensemble` or mlp), got a '{kind}' model")


def fleet_planner(name: str, model: WorldModel, costs: WarehouseCosts, cfg: FleetPlanConfig) -> FleetCEM:
    """The fleet planner ``name`` (one of ``FLEET_PLANNERS``) planning through ``model``'s dynamics with ``cfg``.

    Raises:
        ValueError: the model is the wrong kind for the planner (``check_model_kind``).
    """
    from planners import fleet_baselines

    check_model_kind(name, model)
    build = {COORDINATED: fleet_baselines.coordinated, INDEPENDENT: fleet_baselines.independent,
             CONSTANT_VELOCITY: fleet_baselines.constant_velocity}[name]
    return build(model.dynamics, costs, cfg)


def run_warehouse(args: argparse.Namespace, model: WorldModel) -> dict[str, Any]:
    """`wm eval` for a Warehouse-v1 model: the planner on one floor, then the baselines when asked; the result."""
    from planners.fleet_cem import FleetPlanConfig
    from planners.warehouse_costs import WarehouseCosts
    from worldmodel.envs.warehouse import EPISODE_STEPS, WarehouseFloor

    _check_floor_args(args)
    runs = _runs(args, model)  # every model's kind checked before minutes of planning
    robots, ticks = args.robots or DEFAULT_ROBOTS, args.ticks or EPISODE_STEPS
    given = {k: getattr(args, k) for k in ENV_DEPENDENT if not isinstance(getattr(args, k), Unset)}
    cfg = FleetPlanConfig(**given, seed=args.seed)  # the rest: the fleet planner's own defaults
    floor = WarehouseFloor(robots, seed=args.seed, episode_steps=max(ticks, EPISODE_STEPS))
    if not args.json:
        print(f"distance fields of the {floor.layout.width:g} x {floor.layout.height:g} m floor", file=sys.stderr)
    costs = WarehouseCosts(floor.layout, device=model.device)
    shield = _shield(args, runs[0], costs, cfg.horizon)
    results = {name: _run(name, fleet_planner(name, m, costs, cfg), floor, costs, ticks, args.seed, not args.json,
                          shield if name == runs[0][0] else None)
               for name, m in runs}
    return _result(args, model, cfg, floor, results, shield)


def _shield(args: argparse.Namespace, run: tuple[str, WorldModel], costs: WarehouseCosts,
            plan_horizon: int) -> FleetShield | None:
    """The fleet shield over the first run's plans: on for the coordinated planner unless --no-shield. It checks
    ``FleetShieldConfig``'s horizon, or --shield-horizon, at most the plan's ``plan_horizon`` steps."""
    from planners.fleet_shield import FleetShield, FleetShieldConfig

    name, model = run
    if args.no_shield or name != COORDINATED:
        return None
    given = getattr(args, _SHIELD_HORIZON)
    if isinstance(given, Unset):
        return FleetShield(model.dynamics, costs,
                           FleetShieldConfig(horizon=min(FleetShieldConfig.horizon, plan_horizon)))
    if not 1 <= given <= plan_horizon:
        raise ValueError(f"--shield-horizon must be between 1 and the plan's --horizon {plan_horizon}, got {given}")
    return FleetShield(model.dynamics, costs, FleetShieldConfig(horizon=int(given)))


def _runs(args: argparse.Namespace, model: WorldModel) -> list[tuple[str, WorldModel]]:
    """(planner, the model it plans through) for every run, in order; ValueError for a model of the wrong kind."""
    from worldmodel.artifact import load_model
    from worldmodel.envs.warehouse import WAREHOUSE_ID

    planner = _planner(args)
    check_model_kind(planner, model)
    if args.baseline_model is None:
        return [(planner, model)]
    baseline = load_model(args.baseline_model, device=model.device)
    if baseline.spec.env_id != WAREHOUSE_ID:
        raise ValueError(f"--baseline-model {args.baseline_model} is a model of {baseline.spec.env_id}, "
                         f"not {WAREHOUSE_ID}")
    check_model_kind(INDEPENDENT, baseline, "--baseline-model")
    return [(planner, model), *((name, baseline) for name in BASELINES)]


def _result(args: argparse.Namespace, model: WorldModel, cfg: FleetPlanConfig, floor: WarehouseFloor,
            results: dict[str, FleetEvalResult], shield: FleetShield | None) -> dict[str, Any]:
    """The command's JSON: the first run's summary at the top, the baselines' under ``baselines``; ``shield``: the
    first run's shield settings (None: unshielded)."""
    from planners.fleet_cem import FLEET_CEM
    from worldmodel.envs.warehouse import WAREHOUSE_ID

    (planner, first), *rest = results.items()
    out = {"command": "eval", "model": args.model, "env": WAREHOUSE_ID, "planner": planner, "robots": floor.robots,
           "humans": floor.humans, "ticks": first.ticks, "seed": args.seed, "settings": dataclasses.asdict(cfg),
           "cem": dataclasses.asdict(FLEET_CEM), "device": str(model.device),
           "shield": None if shield is None else dataclasses.asdict(shield.cfg), **_row(first),
           "baseline_model": args.baseline_model, "baselines": {name: _row(r) for name, r in rest}}
    out |= _draw(floor.layout, first, args, f"{planner}: {floor.robots} robots, {first.ticks} ticks, seed {args.seed}")
    out["_summary"] = [f"{WAREHOUSE_ID}: {floor.robots} robots and {floor.humans} humans, {first.ticks} ticks at "
                       f"10 Hz, horizon {cfg.horizon}, {cfg.samples} samples per robot, "
                       + ("unshielded" if shield is None else f"shield horizon {shield.cfg.horizon}"),
                       *(_line(name, r) for name, r in results.items()),
                       *(f"{key}: {out[key]}" for key in ("png", "gif") if key in out)]
    return out


def _check_floor_args(args: argparse.Namespace) -> None:
    """Refuse the options a floor does not take, and counts out of range, naming them."""
    for name, unset in _LONE_AGENT_OPTIONS.items():
        if getattr(args, name) != unset:
            raise ValueError(f"--{name.replace('_', '-')} is for lone-agent envs, not Warehouse-v1 "
                             f"(it takes --robots, --ticks, --planner {'|'.join(FLEET_PLANNERS)})")
    if _planner(args) not in FLEET_PLANNERS:
        raise ValueError(f"--planner {args.planner} plans lone agents; Warehouse-v1 takes "
                         f"{', '.join(FLEET_PLANNERS)}")
    for flag, value in (("--robots", args.robots), ("--ticks", args.ticks)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.baseline_model is not None and _planner(args) != COORDINATED:
        raise ValueError(f"--baseline-model runs the baselines beside --planner {COORDINATED}; "
                         f"with --planner {args.planner}, pass the per-agent model as --model")


def _planner(args: argparse.Namespace) -> str:
    return COORDINATED if isinstance(args.planner, UnsetName) else args.planner


class _Ticking:
    """A fleet planner that moves a progress bar on every call (``run_floor`` plans once per tick)."""

    def __init__(self, planner: FleetCEM, tick: Callable[[], Any]) -> None:
        self.planner, self.tick = planner, tick

    def plan(self, state: FloorState, warm_start: torch.Tensor | None = None) -> FleetPlan:
        plan = self.planner.plan(state, warm_start)
        self.tick()
        return plan


def _run(name: str, planner: FleetCEM, floor: WarehouseFloor, costs: WarehouseCosts, ticks: int, seed: int,
         progress: bool, shield: FleetShield | None) -> FleetEvalResult:
    from tqdm import tqdm

    from planners.warehouse_eval import run_floor

    with tqdm(total=ticks + 1, desc=f"{name}, {floor.robots} robots", unit="tick", file=sys.stderr,
              disable=not progress) as bar:  # + 1: the untimed warm-up call
        return run_floor(_Ticking(planner, bar.update), floor, costs, ticks, seed=seed, shield=shield)


def _row(result: FleetEvalResult) -> dict[str, Any]:
    return result.summary() | {"collisions": result.collisions, "deliveries": result.deliveries}


def _line(name: str, r: FleetEvalResult) -> str:
    return (f"{name}: {r.collisions_per_robot_hour:.1f} collisions per robot-hour, {r.shelf_collisions} shelf "
            f"collisions, {r.deliveries_per_hour:.0f} deliveries per hour, planning {r.plan_ms:.1f} ms per tick "
            f"(p95 {r.plan_ms_p95:.1f})" + (f", shielded robot-ticks {r.shielded_agent_contact} for agent contact and "
                                             f"{r.shielded_shelf} for shelves ({r.shield_ms:.1f} ms per tick)"
                                             if r.shield_ms else ""))


def _draw(layout: Layout, result: FleetEvalResult, args: argparse.Namespace, title: str) -> dict[str, str]:
    """The ``--png`` (paths and where contacts began) and ``--gif`` of the run; their paths by flag."""
    from worldmodel.envs.warehouse import DT
    from worldmodel.envs.warehouse_render import animate, draw_floor, floor_frames

    out = {}
    if args.png:
        out["png"] = str(draw_floor(layout, result.paths, result.path_collisions, Path(args.png), title=title))
    if args.gif:
        stride = -(-len(result.paths) // GIF_FRAMES)  # ceil: at most GIF_FRAMES frames, still in real time
        frames = floor_frames(layout, result.paths, None, result.path_collisions, stride)
        out["gif"] = str(animate(frames, Path(args.gif), fps=1.0 / (DT * stride)))
    return out
