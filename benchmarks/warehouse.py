"""Warehouse (issue 16): coordinated planning through the multi-agent model against the two baselines.

One run, on this machine, from logs collected here with the `wm` commands a user runs:

1. `wm collect --env Warehouse-v1 --robots 50` (the task controller: traffic and contacts), then
   `wm train` twice on those logs: the fleet model (the env's default) and the per-agent ensemble
   (`--dynamics ensemble`).
2. **Closed loop.** The 50-robot floor at 10 Hz (``planners.warehouse_eval.run_floor``, what `wm eval`
   runs), the same floor seeds and tasks for every row (``--floors`` seeds, counts summed): coordinated
   (fleet model), (a) independent and (b) constant velocity (per-agent model), and coordinated with the
   per-agent model swapped in; the coordinated row's plans go through the fleet shield (`wm eval`'s
   default), and once more without it. Then the coordinated planner and (a) on floors whose robots have
   no bumper (``WarehouseFloor(bumper=False)``), with the same models. Every row plans with the fleet planner's defaults
   (``FleetPlanConfig``, ``FLEET_CEM``, ``CostWeights``).
3. **Prediction.** One-step error of the physical state on the trainer's test floors, near others
   (in contact or within a body length) and overall (``benchmarks.warehouse_model``'s measures).
4. **200 robots.** One coordinated planning call for 200 robots on one floor at the same settings:
   the median of a few warm-started calls, with the torch threads stated.
5. **Served.** `wm serve --model FLEET` and the floor driven through it as `wm fleet --env Warehouse-v1`
   drives it: every robot its own request each tick (HTTP), then each tick as one batch (`--batch`); the
   engine plans the site's robots jointly and the fleet shield checks them; latency client-side, the
   floor's counts.

Targets from the issue are booleans under ``met``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.common import record, wm
from benchmarks.warehouse_model import NEAR, errors, nearest_distance, predict_phys
from cluster.commands.eval_warehouse import CONSTANT_VELOCITY, COORDINATED, INDEPENDENT, fleet_planner
from planners.fleet_baselines import coordinated
from planners.fleet_cem import FLEET_CEM, FleetPlanConfig
from planners.fleet_rollout import AgentAsFleet, FloorState
from planners.fleet_shield import FleetShield, FleetShieldConfig
from planners.warehouse_costs import CostWeights, WarehouseCosts
from planners.warehouse_eval import FleetEvalResult, FleetPlanner, run_floor
from worldmodel.artifact import load_model
from worldmodel.config import TrainConfig
from worldmodel.data import read_transitions
from worldmodel.envs.warehouse import DT, EPISODE_STEPS, WAREHOUSE_ID, WarehouseFloor
from worldmodel.fleet_data import neighbour_actions
from worldmodel.model import WorldModel
from worldmodel.training import split_masks

TARGETS = {"vs_independent": 5.0, "vs_constant_velocity": 2.0, "shelf_collisions": 0, "swap_worse": 1.5,
           "big_robots": 200, "big_plan_ms": 100.0, "near_error_ratio": 2.0}
"""Collisions per robot-hour at least 5x / 2x lower than (a) / (b), deliveries at least theirs, no shelf
collisions; the swapped-in per-agent model at least 1.5x the collisions (or 1/1.5 the deliveries); one call for
200 robots within the 100 ms control period; near others, the fleet model's one-step error 2x lower."""
SWAP = "coordinated, per-agent model"
"""The row that plans jointly through the per-agent model: whether the multi-agent model matters."""
UNSHIELDED = "coordinated, no shield"
"""The coordinated row without the fleet shield (`wm eval --no-shield`): what the shield costs and buys."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(tmp: Path, args: argparse.Namespace) -> tuple[str, dict[str, dict[str, Any]]]:
    """`wm collect` the logs, `wm train` both models; returns the logs' path and each model's train result."""
    logs = str(tmp / "logs")
    collect = ["--episodes", str(args.episodes)] if args.episodes is not None else []
    collect += ["--steps", str(args.steps)] if args.steps is not None else []
    say(f"collecting Warehouse-v1 logs of {args.robots} robots")
    collected = wm("collect", "--env", WAREHOUSE_ID, "--robots", str(args.robots), "--out", logs,
                   "--seed", str(args.seed), *collect)
    fit = ["--epochs", str(args.epochs)] if args.epochs is not None else []
    trained = {}
    for name, kind in (("fleet", []), ("per_agent", ["--dynamics", "ensemble"])):
        say(f"training the {name} model")
        trained[name] = wm("train", "--data", logs, "--out", str(tmp / name), "--seed", str(args.seed), *kind, *fit)
    trained["collect"] = {k: collected[k] for k in ("episodes", "transitions", "seconds")}
    return logs, trained


def closed_loop(fleet: WorldModel, agent: WorldModel, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every planner row on the same ``args.floors`` floor seeds and tasks; then, on floors whose robots have
    no bumper (contact only averages approaching speeds), the coordinated planner and baseline (a) again.
    Each floor seed gets a planner seeded with it, so `wm eval --seed S` reruns that floor of a row."""
    floor = WarehouseFloor(args.robots, seed=args.seed)
    costs = WarehouseCosts(floor.layout)
    shield = FleetShield(fleet.dynamics, costs)  # `wm eval`'s default for the coordinated planner
    free = WarehouseFloor(args.robots, layout=floor.layout, bumper=False)
    planners: list[tuple[str, str, Callable[[FleetPlanConfig], FleetPlanner], FleetShield | None, WarehouseFloor]] = [
        (COORDINATED, "fleet", lambda cfg: fleet_planner(COORDINATED, fleet, costs, cfg), shield, floor),
        (UNSHIELDED, "fleet", lambda cfg: fleet_planner(COORDINATED, fleet, costs, cfg), None, floor),
        (INDEPENDENT, "per_agent", lambda cfg: fleet_planner(INDEPENDENT, agent, costs, cfg), None, floor),
        (CONSTANT_VELOCITY, "per_agent", lambda cfg: fleet_planner(CONSTANT_VELOCITY, agent, costs, cfg), None, floor),
        (SWAP, "per_agent", lambda cfg: coordinated(AgentAsFleet(agent.dynamics), costs, cfg), None, floor),
        (COORDINATED, "fleet", lambda cfg: fleet_planner(COORDINATED, fleet, costs, cfg), shield, free),
        (INDEPENDENT, "per_agent", lambda cfg: fleet_planner(INDEPENDENT, agent, costs, cfg), None, free)]
    rows = []
    seeds = range(args.seed, args.seed + args.floors)
    for name, model, build, guard, on in planners:
        say(f"  {name}{'' if on.bumper else ', no bumper'}: {args.robots} robots, {args.ticks} ticks, floor seeds "
            f"{seeds.start}-{seeds.stop - 1}")
        floors = [run_floor(build(FleetPlanConfig(seed=s)), on, costs, args.ticks, seed=s, shield=guard) for s in seeds]
        rows.append(_row(name, model, on.bumper, floors))
        say(f"    {rows[-1]['collisions_per_robot_hour']:.1f} collisions per robot-hour, "
            f"{rows[-1]['shelf_collisions']} shelf, {rows[-1]['deliveries_per_hour']:.0f} deliveries/h, "
            f"{rows[-1]['plan_ms']:.1f} ms per call")
    return rows


def _row(name: str, model: str, bumper: bool, floors: list[FleetEvalResult]) -> dict[str, Any]:
    """One planner's row: counts summed over its floors, rates over their robot-hours and floor time, planning
    times averaged over the floors (``plan_ms_p95``: the floors' mean 95th percentile); ``ticks`` per floor."""
    total = lambda key: sum(getattr(f, key) for f in floors)  # noqa: E731
    mean = lambda key: float(np.mean([getattr(f, key) for f in floors]))  # noqa: E731
    return {"name": name, "model": model, "bumper": bumper, "floors": len(floors), "robots": floors[0].robots,
            "humans": floors[0].humans, "ticks": floors[0].ticks, "collisions": total("collisions"),
            "deliveries": total("deliveries"), "shelf_collisions": total("shelf_collisions"),
            "collisions_per_robot_hour": total("collisions") / total("robot_hours"),
            "deliveries_per_hour": total("deliveries") / (total("ticks") * DT / 3600), "plan_ms": mean("plan_ms"),
            "plan_ms_p95": mean("plan_ms_p95"), "shielded_agent_contact": total("shielded_agent_contact"),
            "shielded_shelf": total("shielded_shelf"), "shield_ms": mean("shield_ms"),
            "per_floor": [f.summary() for f in floors]}


def prediction(logs: str, fleet: WorldModel, agent: WorldModel, seed: int) -> dict[str, Any]:
    """One-step errors of both models on the test floors `wm train` held out (its split: same seed and fractions)."""
    data = read_transitions(logs)
    train_cfg = TrainConfig(seed=seed)
    test = split_masks(data, train_cfg.val_fraction, train_cfg.test_fraction, seed)[2]
    rows, neighbours = data.select(test), neighbour_actions(data)[test]  # matched on the whole floor
    near = nearest_distance(rows.obs) < NEAR
    out: dict[str, Any] = {"test_rows": len(rows), "near_fraction": round(float(near.mean()), 4), "near_m": NEAR}
    for name, model in (("fleet", fleet), ("per_agent", agent)):
        pred = predict_phys(model, rows.obs, rows.actions, neighbours)
        out[name] = {"all": errors(pred, rows.obs, rows.new_obs, np.ones(len(rows), bool)),
                     "near": errors(pred, rows.obs, rows.new_obs, near)}
    out["near_error_ratio"] = round(out["per_agent"]["near"]["nmse_mean"] / max(out["fleet"]["near"]["nmse_mean"],
                                                                                 1e-12), 3)
    return out


def big_floor(fleet: WorldModel, robots: int, calls: int, seed: int) -> dict[str, Any]:
    """Median wall time of one coordinated planning call for ``robots`` robots, warm-started as in the loop."""
    floor = WarehouseFloor(robots, seed=seed)
    start = time.perf_counter()
    costs = WarehouseCosts(floor.layout)
    fields_s = time.perf_counter() - start
    planner = fleet_planner(COORDINATED, fleet, costs, FleetPlanConfig(seed=seed))
    obs, info = floor.reset(seed=seed)
    state = FloorState.from_floor(obs, info, costs)
    warm = planner.plan(state).shift()  # untimed: allocations settle
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        warm = planner.plan(state, warm).shift()
        times.append((time.perf_counter() - start) * 1000)
    return {"robots": robots, "humans": floor.humans, "threads": torch.get_num_threads(), "calls": calls,
            "plan_ms_median": float(np.median(times)), "plan_ms": [round(t, 2) for t in times],
            "fields_seconds": round(fields_s, 2), "floor_m": [floor.layout.width, floor.layout.height]}


def served(model_dir: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The floor closed loop through `wm serve` (a subprocess on a free port), ``args.served_seconds`` each way:
    every robot's own request per tick ('per_robot'), and each tick as one batch request ('batch')."""
    from actors.ports import free_port
    from benchmarks.serve_fleet import running, serve_command
    from serving.fleet import run_loop
    from serving.fleet_config import FleetConfig
    from serving.warehouse_fleet import drive_floor

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out = {}
    with running([*serve_command(model_dir, port, tmp / "served", []), "--redis", "none"], url, tmp / "serve.log"):
        for name, batch in (("per_robot", False), ("batch", True)):
            say(f"  {name}")
            config = FleetConfig(url=url, env_id=WAREHOUSE_ID, agents=args.robots, seconds=args.served_seconds,
                                 seed=args.seed, batch=batch, agent_prefix=f"{name}-")
            out[name] = dataclasses.asdict(run_loop(drive_floor(config, progress=say)))
    return out


def met(rows: list[dict[str, Any]], pred: dict[str, Any], big: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets, each a boolean (``TARGETS``)."""
    by = {r["name"]: r for r in rows if r["bumper"]}
    ours, a, b, swap = by[COORDINATED], by[INDEPENDENT], by[CONSTANT_VELOCITY], by[SWAP]
    c = "collisions_per_robot_hour"
    t = TARGETS
    return {
        "collisions": bool(ours[c] * t["vs_independent"] <= a[c] and ours[c] * t["vs_constant_velocity"] <= b[c]),
        "throughput": bool(ours["deliveries_per_hour"] >= max(a["deliveries_per_hour"], b["deliveries_per_hour"])),
        "shelf": bool(ours["shelf_collisions"] <= t["shelf_collisions"]),
        "model_matters": bool((swap[c] >= t["swap_worse"] * ours[c] and swap[c] > ours[c])
                              or swap["deliveries_per_hour"] * t["swap_worse"] <= ours["deliveries_per_hour"]),
        "big_floor": bool(big["robots"] >= t["big_robots"] and big["plan_ms_median"] <= t["big_plan_ms"]),
        "prediction": bool(pred["near_error_ratio"] >= t["near_error_ratio"]),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        logs, trained = train(Path(tmp), args)
        fleet, agent = load_model(Path(tmp) / "fleet"), load_model(Path(tmp) / "per_agent")
        say("closed loop")
        rows = closed_loop(fleet, agent, args)
        say("one-step prediction error")
        pred = prediction(logs, fleet, agent, args.seed)
        say(f"served: {args.robots} robots through `wm serve` for {args.served_seconds:g} s")
        through = served(str(Path(tmp) / "fleet"), Path(tmp), args)
    say(f"one planning call for {args.big_robots} robots")
    big = big_floor(fleet, args.big_robots, args.calls, args.seed)
    dynamics = {name: trained[name]["metrics"]["dynamics"] for name in ("fleet", "per_agent")}
    models = {name: {"seconds": trained[name]["seconds"], "epochs": d["fit"]["epochs"], "r2_min": d["r2_min"]}
              for name, d in dynamics.items()}
    return {"robots": args.robots, "ticks": args.ticks, "floors": args.floors, "seed": args.seed,
            "threads": torch.get_num_threads(),
            "collect": trained["collect"], "models": models, "settings": dataclasses.asdict(FleetPlanConfig()),
            "weights": dataclasses.asdict(CostWeights()), "shield": dataclasses.asdict(FleetShieldConfig()),
            "cem": dataclasses.asdict(FLEET_CEM), "closed_loop": rows, "prediction": pred, "big": big,
            "served": through, "targets": TARGETS, "met": met(rows, pred, big)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--robots", type=int, default=50, help="robots on the floor, in the logs and the loop")
    parser.add_argument("--episodes", type=int, default=None, help="floor episodes collected (default: wm collect's)")
    parser.add_argument("--steps", type=int, default=None, help="ticks per collected floor episode (default: 600)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs at most (default: wm train's)")
    parser.add_argument("--ticks", type=int, default=EPISODE_STEPS, help="closed-loop ticks per floor")
    parser.add_argument("--floors", type=int, default=3, help="floor seeds per closed-loop row (from --seed)")
    parser.add_argument("--big-robots", type=int, default=TARGETS["big_robots"], help="robots of the timed call")
    parser.add_argument("--calls", type=int, default=5, help="timed calls for the big floor")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--served-seconds", type=float, default=30.0, help="how long the served floor drives, each way")
    parser.add_argument("--seed", type=int, default=0)
    record("warehouse", run(parser.parse_args()))


if __name__ == "__main__":
    main()
