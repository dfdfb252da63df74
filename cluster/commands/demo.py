"""`wm demo`: the whole product on a local Ray, end to end on Nav2D.

A simulated fleet logs random episodes, a learner actor trains a world model from those
logs and registers it, the registry promotes it, Ray Serve comes up with it behind
HAProxy, and a fleet of agents drives closed loop through HTTP while the endpoint logs
their transitions back for the next retrain. The report prints success, zone
violations, latency percentiles and plans/s, and writes a PNG.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

import ray

from actors.fleet import simulate_fleet
from actors.state import StateConfig
from cluster.commands.fleet_report import plot_fleet
from cluster.commands.serve import start_ray_for_serving
from cluster.runtime import free_port
from learners.learner import retrain_once
from serving.deploy import deploy, shutdown_app
from serving.fleet import FleetTrace, drive_fleet, run_loop
from worldmodel.data import read_transitions
from worldmodel.registry import ModelRegistry

# The planning model of the measured Nav2D closed-loop results (README): a 5 x 64x2 ensemble.
PLANNING_MODEL = {"ensemble_size": 5, "hidden": 64, "layers": 2, "reward_hidden": 64, "reward_layers": 2}


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common],
                       help="on a local Ray: simulate a fleet, learn a model, serve it, drive a fleet over HTTP")
    p.add_argument("--out", default="runs/demo", help="working directory (logs, registry, report)")
    p.add_argument("--episodes", type=int, default=100, help="random episodes the simulated fleet logs first")
    p.add_argument("--agents", type=int, default=32, help="agents driving closed loop through the endpoint")
    p.add_argument("--hz", type=float, default=10.0, help="each agent's control rate")
    p.add_argument("--seconds", type=float, default=30.0, help="how long the fleet drives")
    p.add_argument("--no-fly-zones", type=int, default=2, metavar="Z")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out).absolute()
    logs, served_logs, registry_dir = out / "logs", out / "served-logs", out / "registry"
    if logs.exists() or registry_dir.exists():
        raise FileExistsError(f"{out} already holds a demo; pass another --out or remove it")
    if args.episodes < 2 or args.agents < 1 or args.seconds <= 0 or args.hz <= 0:
        raise ValueError("--episodes must be >= 2, --agents >= 1, --seconds and --hz > 0")
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    start = time.perf_counter()
    state = StateConfig(snapshot_uri=str(out / "agent-state"), name="demo-agent-state")

    say("[1/5] starting a local Ray (Serve's HTTP ingress: HAProxy)")
    start_ray_for_serving(None, "haproxy")
    try:
        say(f"[2/5] a simulated fleet of 2 actors logs {args.episodes} random Nav2D episodes to {logs}")
        fleet = simulate_fleet("Nav2D-v0", str(logs), simulators=2, episodes=args.episodes // 2, seed=args.seed,
                               env_kwargs={"num_no_fly_zones": args.no_fly_zones})
        say(f"[3/5] a learner actor trains a {PLANNING_MODEL['ensemble_size']} x {PLANNING_MODEL['hidden']}x"
            f"{PLANNING_MODEL['layers']} ensemble from the logs (through Ray Data) and registers it")
        learned = retrain_once(str(logs), str(registry_dir), checkpoint_root=str(out / "checkpoints"),
                               model_cfg=PLANNING_MODEL, train_cfg={"seed": args.seed}, promote=True)
        version = ModelRegistry(str(registry_dir)).get("production").version
        say(f"[4/5] Ray Serve comes up with v{version} (registry stage 'production')")
        url = deploy("production", registry_uri=str(registry_dir), log_uri=str(served_logs), port=free_port(),
                     state=state, access_log=False)  # the served planner's defaults (planners.service.ServiceConfig)
        say(f"[5/5] {args.agents} agents drive closed loop at {args.hz:g} Hz for {args.seconds:g} s through {url}")
        trace = FleetTrace()
        result = run_loop(drive_fleet(url, agents=args.agents, hz=args.hz, seconds=args.seconds,
                                      env_id="Nav2D-v0", no_fly_zones=args.no_fly_zones, seed=args.seed + 1,
                                      progress=say, trace=trace))
        telemetry = shutdown_app(state)["telemetry"]
    finally:
        ray.shutdown()
    drove = dataclasses.asdict(result)
    plot_fleet(trace, out / "fleet.png", f"wm demo: {args.agents} agents at {args.hz:g} Hz through Ray Serve, "
               f"model v{version}")
    served = read_transitions(str(served_logs)) if served_logs.exists() else None
    report = {"command": "demo", "out": str(out), "fleet_logs": fleet, "learn": learned, "served_version": version,
              "url": url, "drive": drove, "telemetry": telemetry,
              "served_transitions_logged": 0 if served is None else len(served),
              "png": str(out / "fleet.png"), "seconds": round(time.perf_counter() - start, 1)}
    lat = drove["latency_ms"]
    report["_summary"] = [
        f"fleetwm demo in {report['seconds']} s on a local Ray",
        f"logs: {fleet['transitions']} transitions from {fleet['episodes']} random episodes",
        f"model v{version}: {_holdout_line(learned)}",
        f"served over HTTP: {drove['requests']} requests from {args.agents} agents at {drove['rate_hz']:.1f} req/s, "
        f"latency p50 {lat['p50']:.1f} / p95 {lat['p95']:.1f} / p99 {lat['p99']:.1f} ms, {drove['errors']} errors",
        f"closed loop: {drove['episodes']} episodes, success {drove['success_rate']:.0%}, "
        f"{drove['violations']} steps in no-fly zones, {drove['fallbacks']} fallbacks",
        f"telemetry: {report['served_transitions_logged']} served transitions logged to {served_logs} "
        "for the next retrain",
        f"plot: {report['png']}",
    ]
    return report


def _holdout_line(learned: dict[str, Any]) -> str:
    holdout = learned.get("holdout") or {}
    score = (holdout.get("candidate") or {}).get("score")
    return "holdout score " + (f"{score:.4f}" if isinstance(score, float) else "n/a") + \
        f", promoted to production: {learned.get('promoted')}"
