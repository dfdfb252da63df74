"""`wm fleet`: N simulated agents drive closed loop through a running fleet endpoint, over HTTP or the fleet bus.

Every default is ``serving.fleet_config.FleetConfig``'s; this module only names them as flags. The
driver (``serving.fleet``: the HTTP and stream clients, gymnasium envs) loads only when the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from planners.config import OBJECTIVES
from serving.fleet_config import TRANSPORTS, FleetConfig, FleetResult, FleetTrace

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(FleetConfig)}

# FleetConfig's fields set from the flag of the same name (--env sets env_id, --redis redis_url).
_FLAGS = ("url", "agents", "hz", "seconds", "no_fly_zones", "objective", "deadline_ms", "timeout_s", "retries",
          "seed", "transport", "bus_prefix", "batch", "floor_robots")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    p = sub.add_parser("fleet", parents=[common],
                       help="drive N simulated agents closed loop through a fleet endpoint (load test)")
    p.add_argument("--url", default=None, help="base URL of the endpoint, e.g. http://127.0.0.1:8000 (over HTTP)")
    p.add_argument("--transport", choices=TRANSPORTS, default=d["transport"],
                   help="http: every agent POSTs to --url; redis: the agents share one stream client on --redis")
    p.add_argument("--redis", default=None, metavar="URL",
                   help="the fleet bus (`wm serve --redis`'s), e.g. redis://127.0.0.1:6379/0, with --transport redis")
    p.add_argument("--bus-prefix", default=d["bus_prefix"], help="name prefix of the bus's streams (the app's)")
    p.add_argument("--agents", type=int, default=d["agents"],
                   help="N agents, each stepping its own env (Warehouse-v1: N robots on one floor, one site)")
    p.add_argument("--hz", type=float, default=d["hz"], help="each agent's control rate")
    p.add_argument("--seconds", type=float, default=d["seconds"], help="how long to drive")
    p.add_argument("--env", default=d["env_id"], help="gymnasium id of the agents' env")
    p.add_argument("--no-fly-zones", type=int, nargs="?", const=2, default=d["no_fly_zones"], metavar="Z",
                   help="Nav2D: Z zones per episode (2 when given without a number)")
    p.add_argument("--objective", choices=OBJECTIVES, default=d["objective"])
    p.add_argument("--token", default=None,
                   help="bearer token (default: the environment variable `wm serve` reads, FLEETWM_API_TOKEN)")
    p.add_argument("--deadline-ms", type=float, default=d["deadline_ms"],
                   help="planning deadline sent with every request (default: the server's)")
    p.add_argument("--timeout-s", type=float, default=d["timeout_s"], help="per-attempt timeout of each request")
    p.add_argument("--retries", type=int, default=d["retries"],
                   help="retries after a connection error, timeout or 5xx (a 4xx is final)")
    p.add_argument("--floor-robots", type=int, default=d["floor_robots"], metavar="N",
                   help="Warehouse-v1: the floor sized for N robots, as the endpoint serves it (`wm serve --robots`; "
                        "default: %(default)s)")
    p.add_argument("--batch", action="store_true",
                   help="Warehouse-v1 over HTTP: each tick's robots as one POST /v1/plan/batch")
    p.add_argument("--png", default=None, help="write latency over time, its histogram and a few agents' paths")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.set_defaults(handler=run_fleet)


def run_fleet(args: argparse.Namespace) -> dict[str, Any]:
    from serving.config import TOKEN_ENV  # serving.config loads Ray: only when the command runs
    from serving.fleet import drive_fleet, run_loop
    from serving.warehouse_fleet import drive_floor
    from worldmodel.envs.warehouse import WAREHOUSE_ID

    if args.redis is not None and args.transport != "redis":
        raise ValueError(f"--redis {args.redis} drives nothing over --transport {args.transport}: "
                         "add --transport redis")
    config = FleetConfig(**{name: getattr(args, name) for name in _FLAGS}, env_id=args.env, redis_url=args.redis,
                         token=args.token or os.environ.get(TOKEN_ENV))
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    trace = FleetTrace() if args.png else None
    say(f"wm fleet: {config.agents} agents at {config.hz:g} Hz for {config.seconds:g} s through {config.target}")
    if config.env_id == WAREHOUSE_ID:
        if trace is not None:
            raise ValueError(f"--png draws lone agents' paths; for {WAREHOUSE_ID} floors use `wm eval --png`")
        result = run_loop(drive_floor(config, progress=say))
    else:
        result = run_loop(drive_fleet(config, progress=say, trace=trace))
    out = {"command": "fleet", "transport": config.transport, "url": config.url, "redis": config.redis_url,
           "env": config.env_id, "objective": config.objective, "no_fly_zones": config.no_fly_zones,
           "deadline_ms": config.deadline_ms} | dataclasses.asdict(result)
    if trace is not None:
        from cluster.commands.fleet_report import plot_fleet  # matplotlib: only when a plot is asked for

        title = f"{config.agents} agents at {config.hz:g} Hz through {config.target}"
        out["png"] = str(plot_fleet(trace, Path(args.png), title))
    out["_summary"] = _summary(result, config) + ([f"plot: {out['png']}"] if trace is not None else [])
    return out


def _summary(result: FleetResult, config: FleetConfig) -> list[str]:
    lat = result.latency_ms
    errors = ", ".join(f"{n} {kind}" for kind, n in sorted(result.errors_by_kind.items())) or "none"
    reasons = ", ".join(f"{n} {why}" for why, n in sorted(result.fallbacks_by_reason.items()))
    return [
        f"{result.requests} requests from {config.agents} agents in {result.seconds:.1f} s: "
        f"{result.rate_hz:.1f} req/s ({result.rate_per_agent_hz:.2f} per agent, asked {config.hz:g}), "
        f"{result.late_ticks} late ticks",
        f"latency p50 {lat['p50']:.1f} / p95 {lat['p95']:.1f} / p99 {lat['p99']:.1f} / max {lat['max']:.1f} ms",
        f"closed loop: {result.episodes} episodes, success {result.success_rate:.1%}, {result.violations} steps "
        f"in no-fly zones, {result.fallbacks} fallbacks" + (f" ({reasons})" if reasons else ""),
        f"errors: {errors}; {result.retries} retries; model versions {', '.join(result.model_versions) or '-'}",
    ] + _floor_summary(result)


def _floor_summary(result: FleetResult) -> list[str]:
    """Warehouse-v1: what the floor counted."""
    f = result.floor
    if f is None:
        return []
    return [f"floor: {f.ticks} ticks, {f.collisions_per_robot_hour:.1f} collisions per robot-hour, "
            f"{f.shelf_collisions} shelf collisions, {f.deliveries_per_hour:.0f} deliveries per hour, "
            f"{f.shielded} shielded answers"]
