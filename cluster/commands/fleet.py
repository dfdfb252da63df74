"""`wm fleet`: N simulated agents drive closed loop through a running fleet endpoint over HTTP."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from cluster.commands.fleet_report import plot_fleet
from planners.service import OBJECTIVES
from serving.config import TOKEN_ENV
from serving.fleet import FleetTrace, drive_fleet, run_loop
from worldmodel.envs import NAV2D_ID


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("fleet", parents=[common],
                       help="drive N simulated agents closed loop through a fleet endpoint (load test)")
    p.add_argument("--url", required=True, help="base URL of the endpoint, e.g. http://127.0.0.1:8000")
    p.add_argument("--agents", type=int, default=10, help="N agents, each stepping its own env")
    p.add_argument("--hz", type=float, default=10.0, help="each agent's control rate")
    p.add_argument("--seconds", type=float, default=30.0, help="how long to drive")
    p.add_argument("--env", default=NAV2D_ID, help="gymnasium id of the agents' env")
    p.add_argument("--no-fly-zones", type=int, nargs="?", const=2, default=0, metavar="Z",
                   help="Nav2D: Z zones per episode (2 when given without a number)")
    p.add_argument("--objective", choices=OBJECTIVES, default="learned")
    p.add_argument("--token", default=None, help=f"bearer token (default: ${TOKEN_ENV})")
    p.add_argument("--deadline-ms", type=float, default=None, help="planning deadline sent with every request")
    p.add_argument("--timeout-s", type=float, default=2.0, help="per-attempt timeout of each request")
    p.add_argument("--retries", type=int, default=3, help="retries after a connection error, timeout or 5xx")
    p.add_argument("--png", default=None, help="write latency over time, its histogram and a few agents' paths")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run_fleet)


def run_fleet(args: argparse.Namespace) -> dict[str, Any]:
    if args.agents < 1 or args.hz <= 0 or args.seconds <= 0:
        raise ValueError(f"--agents must be >= 1 and --hz, --seconds > 0; got {args.agents}, {args.hz}, "
                         f"{args.seconds}")
    token = args.token or os.environ.get(TOKEN_ENV)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    trace = FleetTrace() if args.png else None
    say(f"wm fleet: {args.agents} agents at {args.hz:g} Hz for {args.seconds:g} s through {args.url}")
    result = run_loop(drive_fleet(args.url, args.agents, args.hz, args.seconds, env_id=args.env,
                                  no_fly_zones=args.no_fly_zones, objective=args.objective, token=token,
                                  deadline_ms=args.deadline_ms, seed=args.seed, progress=say, trace=trace,
                                  timeout_s=args.timeout_s, retries=args.retries))
    out = {"command": "fleet", "url": args.url, "env": args.env, "objective": args.objective,
           "no_fly_zones": args.no_fly_zones, "deadline_ms": args.deadline_ms} | dataclasses.asdict(result)
    if trace is not None:
        title = f"{args.agents} agents at {args.hz:g} Hz through {args.url}"
        out["png"] = str(plot_fleet(trace, Path(args.png), title))
    lat = result.latency_ms
    errors = ", ".join(f"{n} {kind}" for kind, n in sorted(result.errors_by_kind.items())) or "none"
    out["_summary"] = [
        f"{result.requests} requests from {args.agents} agents in {result.seconds:.1f} s: "
        f"{result.rate_hz:.1f} req/s ({result.rate_per_agent_hz:.2f} per agent, asked {args.hz:g}), "
        f"{result.late_ticks} late ticks",
        f"latency p50 {lat['p50']:.1f} / p95 {lat['p95']:.1f} / p99 {lat['p99']:.1f} / max {lat['max']:.1f} ms",
        f"closed loop: {result.episodes} episodes, success {result.success_rate:.1%}, {result.violations} steps "
        f"in no-fly zones, {result.fallbacks} fallbacks",
        f"errors: {errors}; {result.retries} retries; model versions {', '.join(result.model_versions) or '-'}",
    ] + ([f"plot: {out['png']}"] if trace is not None else [])
    return out
