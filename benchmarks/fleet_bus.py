"""Both transports side by side: Nav2D fleets closed loop through Redis Streams and through HTTP, one `wm serve`.

Collect and train as ``serve_fleet.py`` does (the default model), start a redis-server like the one
`wm serve --redis local` owns (AOF on, ``appendfsync everysec``) and `wm serve` with its defaults on it:
Ray's metrics on, telemetry logged (through the telemetry stream and the ingest consumer), agent state in
the shards, the planner reached through its deployment. Then, in one run, with 2 no-fly zones per episode:

1. the target row, 100 agents at 10 Hz for 60 s, through Redis (``--transport redis``) and then HTTP;
2. for each transport, the largest fleet that holds p99 <= 100 ms with no errors and the asked rate
   (agents 50, 75, 100, 125, 150, 200, ... for 20 s each, until one falls behind).

Latency is measured by the clients: from the request added to the stream (or sent) to its answer read.
Target (issue 14), on this 2-core machine: 100 agents through Redis, p99 <= 50 ms, 0 errors, success
>= 99%, 0 zone violations. Run ``python -m benchmarks.fleet_bus`` on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import pyarrow.dataset as ds
import requests

from actors.ports import free_port
from actors.redis_server import RedisServer
from benchmarks.common import record, wm
from benchmarks.cpu_share import CpuShare
from benchmarks.nav2d_closed_loop import MODEL
from benchmarks.serve_fleet import _row, drive_row, fleet_config, p99_by_second, running, sustained, warm_up
from serving.fleet_config import FleetResult, FleetTrace

TARGET = {"p99_ms": 50.0, "errors": 0, "success_rate": 0.99, "violations": 0}
LADDER_P99_MS = 100.0
TRANSPORTS = ("redis", "http")


def drive(transport: str, url: str, redis_url: str, agents: int, args: argparse.Namespace, seconds: float,
          seed: int, trace: FleetTrace | None = None) -> FleetResult:
    """``serve_fleet.drive_row`` through ``transport``, labelled with it."""
    config = fleet_config(url, agents, argparse.Namespace(**vars(args) | {"seconds": seconds}), seed,
                          transport=transport, redis_url=redis_url)
    return drive_row(config, lambda m: print(f"[{transport}] {m}", file=sys.stderr, flush=True), trace)


def holds(result: FleetResult, hz: float) -> bool:
    """Kept up within the ladder's bound: no errors, the asked rate (within 5%), p99 <= LADDER_P99_MS."""
    return sustained(result, hz) and result.latency_ms["p99"] <= LADDER_P99_MS


def ladder(sizes: str, hz: float, run_size: Callable[[int], FleetResult], label: str) -> dict[str, Any]:
    """Grow the fleet through ``sizes`` ("50,75,...", each driven by ``run_size``) until it no longer holds;
    the largest that did."""
    rows, best = [], None
    for agents in [int(a) for a in sizes.split(",") if a]:
        result = run_size(agents)
        rows.append({"agents": agents, "holds": holds(result, hz)} | _row(result))
        print(f"[{label}] {agents} agents: p99 {result.latency_ms['p99']:.1f} ms, {result.errors} errors, "
              f"{result.rate_per_agent_hz:.2f} Hz/agent -> {'holds' if rows[-1]['holds'] else 'behind'}",
              file=sys.stderr, flush=True)
        if not rows[-1]["holds"]:
            break
        best = agents
    return {"ladder": rows, "largest_fleet": best}


def _bus(url: str) -> dict[str, Any]:
    """The stream consumer's counts (``GET /v1/models``'s ``bus``)."""
    return requests.get(f"{url}/v1/models", timeout=30).json()["bus"]


def _cycles(before: dict[str, Any], after: dict[str, Any], result: FleetResult) -> dict[str, Any]:
    """Requests per read of the consumer over the row (its warm-up included), and the cycle length that implies
    at the row's rate: a read is issued when the engine's cycle ends and takes what arrived during it."""
    reads, answered = after["batches"] - before["batches"], after["answered"] - before["answered"]
    per_read = answered / reads if reads else None
    return {"requests_per_read": per_read,
            "cycle_ms": None if per_read is None else round(per_read / result.rate_hz * 1000, 1)}


def met(result: FleetResult, hz: float) -> bool:
    lat = result.latency_ms
    return (lat["p99"] <= TARGET["p99_ms"] and result.errors == TARGET["errors"]
            and result.success_rate >= TARGET["success_rate"] and result.violations == TARGET["violations"]
            and result.rate_per_agent_hz >= 0.95 * hz)


def run(args: argparse.Namespace) -> dict[str, Any]:
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        logs = str(Path(tmp, "logs"))
        say(f"collecting {args.collect_episodes} Nav2D episodes and training the default model")
        wm("collect", "--env", "Nav2D-v0", "--episodes", str(args.collect_episodes), "--out", logs,
           "--seed", str(args.seed))
        ours = wm("train", "--data", logs, "--out", str(Path(tmp, "ours")), *MODEL)
        served_logs = Path(tmp, "served-logs")
        with RedisServer(Path(tmp, "redis")) as redis_server:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            cmd = [sys.executable, "-m", "cluster", "serve", "--model", ours["model_dir"], "--port", str(port),
                   "--log-dir", str(served_logs), "--redis", redis_server.url, "--json"]
            say(f"starting `wm serve` on {url} with the bus at {redis_server.url}")
            rows: dict[str, Any] = {}
            with running(cmd, url, Path(tmp, "serve.log")):
                warm_up(url)
                for transport in TRANSPORTS:
                    trace = FleetTrace(track_agents=0)
                    # from 2 s (the untimed warm-up) + 10 s into the timed run, for 20 s of it
                    cpu = CpuShare(12.0, min(20.0, max(args.seconds - 12.0, 1.0))).start()
                    before = _bus(url)
                    result = drive(transport, url, redis_server.url, args.agents, args, args.seconds, args.seed + 1,
                                   trace)
                    rows[transport] = {"target_row": _row(result) | {"p99_ms_by_second": p99_by_second(trace)},
                                       "target_met": met(result, args.hz), "cpu_percent_of_a_core": cpu.result()}
                    if transport == "redis":
                        rows[transport] |= _cycles(before, _bus(url), result)
                for transport in TRANSPORTS if args.ladder else ():
                    rows[transport] |= ladder(args.ladder, args.hz, lambda n, t=transport: drive(
                        t, url, redis_server.url, n, args, args.ladder_seconds, args.seed + n), transport)
            served = _stopped(Path(tmp, "serve.log"))
        logged = ds.dataset(str(served_logs), format="parquet").count_rows() if served_logs.exists() else 0
    return {"target": TARGET, "target_met": rows["redis"]["target_met"], "ladder_p99_ms": LADDER_P99_MS,
            "settings": {"serve": "wm serve defaults (--redis at a redis-server with AOF everysec, --log-dir)",
                         "ray_metrics": True, "telemetry": "through the telemetry stream", "agent_state": "shards",
                         "planner": "its Serve deployment", "agents": args.agents, "hz": args.hz,
                         "seconds": args.seconds, "no_fly_zones": args.no_fly_zones,
                         "ladder_seconds": args.ladder_seconds},
            "transports": rows, "transitions_logged": logged, "serve_result": served,
            "model_r2_min": ours["metrics"]["dynamics"]["r2_min"]}


def _stopped(log: Path) -> dict[str, Any] | None:
    """`wm serve --json`'s result, from its log once ``running`` has stopped it (None when it printed none)."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100, help="the target row's fleet")
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--no-fly-zones", type=int, default=2)
    parser.add_argument("--ladder", default="50,75,100,125,150,200,300,400",
                        help="fleet sizes tried in order for the largest holding p99 <= 100 ms ('' skips)")
    parser.add_argument("--ladder-seconds", type=float, default=20.0)
    parser.add_argument("--collect-episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="fleet_bus", help="results file name (smoke runs: another name)")
    args = parser.parse_args()
    record(args.name, run(args))


if __name__ == "__main__":
    main()
