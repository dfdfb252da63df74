"""`wm demo`: the whole product on a local Ray, end to end on Nav2D.

A simulated fleet logs random episodes, a learner actor trains a world model (the default size,
``worldmodel.config.ModelConfig``) from those logs and registers it, the registry promotes it,
Ray Serve comes up with it behind HAProxy (on its own free ports, so a `wm serve` may run beside
it), and a fleet of agents drives closed loop through HTTP while the endpoint logs their
transitions back for the next retrain: by default through the fleet bus, a redis-server the demo
owns (``--redis``, as `wm serve`'s), so a logger crash loses none of them. The report prints
success, zone violations, latency percentiles and plans/s, and writes a PNG.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

from cluster.commands.serve import add_redis_option

Say = Callable[[str], None]


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
    add_redis_option(p, "OUT/redis")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from cluster.commands.serve import fleet_bus, redis_choice, start_ray_for_serving

    out = Path(args.out).absolute()
    if (out / "logs").exists() or (out / "registry").exists():
        raise FileExistsError(f"{out} already holds a demo; pass another --out or remove it")
    if args.episodes < 2 or args.agents < 1 or args.seconds <= 0 or args.hz <= 0:
        raise ValueError("--episodes must be >= 2, --agents >= 1, --seconds and --hz > 0")
    choice = redis_choice(args.redis, None)
    say: Say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    start = time.perf_counter()
    with fleet_bus(choice, out / "redis") as bus:
        on_bus = "no fleet bus" if bus is None else f"the fleet bus at {bus.shown()['url']}"
        say(f"[1/5] starting a local Ray (Serve's HTTP ingress: HAProxy), {on_bus}")
        start_ray_for_serving(None, "haproxy")
        try:
            report = _learn(args, out, say)
            report |= _serve_and_drive(args, out, report["served_version"], say, bus and bus.url)
        finally:
            ray.shutdown()
        report["redis"] = bus and bus.shown()
    return _report(args, out, report, round(time.perf_counter() - start, 1))


def _learn(args: argparse.Namespace, out: Path, say: Say) -> dict[str, Any]:
    """Steps 2 and 3: random episodes into the logs, a model trained from them and promoted."""
    from actors.fleet import simulate_fleet
    from learners.learner import retrain_once
    from worldmodel.config import ModelConfig
    from worldmodel.registry import ModelRegistry

    logs, registry_dir = out / "logs", out / "registry"
    say(f"[2/5] a simulated fleet of 2 actors logs {args.episodes} random Nav2D episodes to {logs}")
    fleet = simulate_fleet("Nav2D-v0", str(logs), simulators=2, episodes=args.episodes // 2, seed=args.seed,
                           env_kwargs={"num_no_fly_zones": args.no_fly_zones})
    size = ModelConfig()
    say(f"[3/5] a learner actor trains a {size.ensemble_size} x {size.hidden}x{size.layers} ensemble from the "
        "logs (through Ray Data) and registers it")
    learned = retrain_once(str(logs), str(registry_dir), checkpoint_root=str(out / "checkpoints"),
                           train_cfg={"seed": args.seed}, promote=True)
    version = ModelRegistry(str(registry_dir)).get("production").version
    return {"fleet_logs": fleet, "learn": learned, "served_version": version}


def _serve_and_drive(args: argparse.Namespace, out: Path, version: str, say: Say,
                     redis_url: str | None) -> dict[str, Any]:
    """Steps 4 and 5: the endpoint with the promoted model (the served defaults; the fleet bus at
    ``redis_url`` unless None), a fleet through it."""
    from actors.ports import free_port
    from actors.state import StateConfig
    from cluster.commands.fleet_report import plot_fleet
    from cluster.commands.serve import telemetry_stream
    from serving.deploy import deploy, shutdown_app
    from serving.fleet import drive_fleet, run_loop
    from serving.fleet_config import FleetConfig, FleetTrace

    state = StateConfig(snapshot_uri=str(out / "agent-state"), name="demo-agent-state")
    say(f"[4/5] Ray Serve comes up with v{version} (registry stage 'production')")
    app = {"registry_uri": str(out / "registry"), "log_uri": str(out / "served-logs"), "state": state,
           "access_log": False, "redis_url": redis_url}
    url = deploy("production", port=free_port(), **app)
    say(f"[5/5] {args.agents} agents drive closed loop at {args.hz:g} Hz for {args.seconds:g} s through {url}")
    trace = FleetTrace()
    fleet = FleetConfig(url, agents=args.agents, hz=args.hz, seconds=args.seconds, no_fly_zones=args.no_fly_zones,
                        seed=args.seed + 1)
    result = run_loop(drive_fleet(fleet, progress=say, trace=trace))
    stopped = shutdown_app(state, telemetry_stream=telemetry_stream(app))
    plot_fleet(trace, out / "fleet.png", f"wm demo: {args.agents} agents at {args.hz:g} Hz through Ray Serve, "
               f"model v{version}")
    return {"url": url, "drive": dataclasses.asdict(result), "telemetry": stopped["telemetry"],
            "telemetry_not_written": stopped["not_written"], "unwritten_pending_in": stopped["unwritten_pending_in"],
            "shutdown_problems": stopped["problems"]}


def _report(args: argparse.Namespace, out: Path, report: dict[str, Any], seconds: float) -> dict[str, Any]:
    from worldmodel.data import list_log_files, read_transitions

    served_logs = out / "served-logs"
    files = list_log_files(str(served_logs))  # none when the logger wrote nothing: the report says why
    report = {"command": "demo", "out": str(out), **report,
              "served_transitions_logged": len(read_transitions(str(served_logs))) if files else 0,
              "png": str(out / "fleet.png"), "seconds": seconds}
    drove, fleet, version = report["drive"], report["fleet_logs"], report["served_version"]
    lat = drove["latency_ms"]
    report["_summary"] = [
        f"fleetwm demo in {seconds} s on a local Ray",
        f"logs: {fleet['transitions']} transitions from {fleet['episodes']} random episodes",
        f"model v{version}: {_holdout_line(report['learn'])}",
        f"served over HTTP: {drove['requests']} requests from {args.agents} agents at {drove['rate_hz']:.1f} req/s, "
        f"latency p50 {lat['p50']:.1f} / p95 {lat['p95']:.1f} / p99 {lat['p99']:.1f} ms, {drove['errors']} errors",
        f"closed loop: {drove['episodes']} episodes, success {drove['success_rate']:.0%}, "
        f"{drove['violations']} steps in no-fly zones, {drove['fallbacks']} fallbacks "
        f"{drove['fallbacks_by_reason'] or ''}".rstrip(),
        f"telemetry: {report['served_transitions_logged']} served transitions logged to {served_logs} "
        f"for the next retrain ({report['telemetry_not_written']} not written"
        + (f", pending in {report['redis']['url']} stream {report['unwritten_pending_in']})"
           if report["unwritten_pending_in"] else ")"),
        f"plot: {report['png']}",
        *(f"problem: {p}" for p in report["shutdown_problems"]),
    ]
    return report


def _holdout_line(learned: dict[str, Any]) -> str:
    holdout = learned.get("holdout") or {}
    score = (holdout.get("candidate") or {}).get("score")
    return "holdout score " + (f"{score:.4f}" if isinstance(score, float) else "n/a") + \
        f", promoted to production: {learned.get('promoted')}"
