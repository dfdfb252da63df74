"""A fleet of Nav2D agents closed loop over HTTP: fleetwm's Serve endpoint against the article's FastAPI service.

Collect and train as ``nav2d_closed_loop.py`` does (same episodes, models and planner settings),
start `wm serve` in a subprocess, and drive 100 agents at 10 Hz with no-fly zones for 60 s
through it with ``serving.fleet.drive_fleet`` (latency measured client-side). Target (serving
issue), on a 2-core machine: p99 <= 50 ms, zero errors, success >= 99%, the asked rate achieved.

A second `wm serve` in the same run measures the serving path's floor: the same endpoint, telemetry
and fleet with a planner that costs next to nothing (CEM, horizon 1, 2 samples, 1 round), so the
latency left is that of HTTP, Serve, the Ray hops, the state shard and the logger on these cores.

The reference in the same run is the original article's service: a plain FastAPI + uvicorn app
(written below; it is the reference, not product code) that plans one agent per request with
gradient MPC, horizon 15, through one 64x2 MLP, on one CPU thread. The same driver finds the
most agents it sustains at the same rate (doubling until it falls behind) and its plans/s.

Run ``python -m benchmarks.serve_fleet`` on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow.dataset as ds
import requests

from actors.ports import free_port
from benchmarks.common import record, wm
from benchmarks.nav2d_closed_loop import ARTICLE_MODEL, MODEL, SERVED_PLANNER
from serving.client import FleetClient
from serving.fleet import drive_fleet, run_loop
from serving.fleet_config import FleetConfig, FleetResult, FleetTrace

TARGET = {"p99_ms": 50.0, "errors": 0, "success_rate": 0.99}
FLOOR_PLANNER = ["--planner", "cem", "--horizon", "1", "--samples", "2", "--iterations", "1"]
"""A planner that costs next to nothing: the serving path's own latency is what is left."""
READY_TIMEOUT_S = 240.0


def reference_app(model_dir: str) -> Any:
    """The article's service: FastAPI, one agent per request, gradient MPC H15 through a 64x2 MLP, 1 thread."""
    import torch
    from fastapi import FastAPI

    from cluster.commands.bench import REFERENCE_CFG
    from planners import Objective, make_planner
    from planners.objectives import LearnedReward
    from worldmodel.artifact import load_model

    torch.set_num_threads(1)
    model = load_model(model_dir, device=torch.device("cpu"))
    planner = make_planner("gradient", model.dynamics, Objective([LearnedReward(model.reward)]),
                           torch.tensor(model.spec.act_low), torch.tensor(model.spec.act_high), REFERENCE_CFG)
    app = FastAPI(title="article reference")

    @app.post("/v1/plan")
    def plan(body: dict[str, Any]) -> dict[str, Any]:  # a sync route: FastAPI runs it in its thread pool
        obs = torch.tensor([body["observation"]], dtype=torch.float32)  # (1, S)
        result = planner.plan(obs)
        return {"action": result.actions[0].tolist(), "model_version": "article", "plan_id": uuid.uuid4().hex,
                "disagreement": 0.0, "fallback": False, "fallback_reason": None, "replayed": False}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "model_version": "article"}

    return app


def _serve_reference(model_dir: str, port: int) -> None:
    import uvicorn

    uvicorn.run(reference_app(model_dir), host="127.0.0.1", port=port, log_level="warning")


@contextlib.contextmanager
def running(cmd: list[str], url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``cmd`` (a server), wait until ``url``/healthz answers 200, and stop it with SIGTERM on exit."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{' '.join(cmd)} exited ({proc.returncode}): {log.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url}/healthz did not answer within {READY_TIMEOUT_S:.0f} s")
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                time.sleep(0.5)
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def warm_up(url: str, calls: int = 5) -> None:
    """A few sequential plans with a long timeout: first calls pay for lazy initialisation, not the service."""
    with FleetClient(url, timeout_s=60.0) as client:
        for i in range(calls):
            client.plan(f"warm-up-{i}", [0.0] * 6)


def _row(result: FleetResult) -> dict[str, Any]:
    return dataclasses.asdict(result) | {"plans_per_s": result.rate_hz}


def p99_by_second(trace: FleetTrace) -> list[float]:
    """p99 latency (ms) of the requests sent in each whole second of a run: periodic stalls show up here."""
    sent, latency = np.asarray(trace.sent_s), np.asarray(trace.latency_ms)
    seconds = sent.astype(int)
    return [round(float(np.percentile(latency[seconds == k], 99)), 1) for k in np.unique(seconds)]


def serve_command(model_dir: str, port: int, log_dir: Path, planner: list[str]) -> list[str]:
    """`wm serve` of ``model_dir`` on ``port`` with ``planner``'s flags, telemetry on (as a fleet runs it:
    every served transition goes back into the logs under ``log_dir``)."""
    return [sys.executable, "-m", "cluster", "serve", "--model", model_dir, "--port", str(port),
            "--log-dir", str(log_dir), *planner, "--json"]


def drive_row(config: FleetConfig, say: Any, trace: FleetTrace | None = None) -> FleetResult:
    """A 2 s untimed drive (the batch sizes this fleet makes warm up), then the timed one."""
    run_loop(drive_fleet(dataclasses.replace(config, seconds=2.0, seed=config.seed + 100_000, drain=False)))
    say(f"{config.agents} agents at {config.hz:g} Hz, {config.no_fly_zones} zones, {config.seconds:g} s")
    return run_loop(drive_fleet(config, progress=say, trace=trace))


def fleet_config(url: str, agents: int, args: argparse.Namespace, seed: int, **options: Any) -> FleetConfig:
    """A row's fleet: ``agents`` at ``args.hz`` for ``args.seconds`` with ``args.no_fly_zones`` zones each."""
    return FleetConfig(url, agents=agents, hz=args.hz, seconds=args.seconds, no_fly_zones=args.no_fly_zones,
                       seed=seed, **options)


def sustained(result: FleetResult, hz: float) -> bool:
    """The service kept up: no errors, the asked rate (within 5%) and answers inside one period."""
    return (result.errors == 0 and result.rate_per_agent_hz >= 0.95 * hz
            and result.latency_ms["p99"] <= 1000.0 / hz)


def reference_ladder(url: str, hz: float, seconds: float, seed: int, most: int) -> dict[str, Any]:
    """Double the agents (1, 2, 4, ...) until the reference falls behind; the largest fleet it sustained."""
    rows, best = [], None
    agents = 1
    while agents <= most:
        result = run_loop(drive_fleet(FleetConfig(url, agents=agents, hz=hz, seconds=seconds, seed=seed, drain=False)))
        rows.append(_row(result) | {"sustained": sustained(result, hz)})
        print(f"reference: {agents} agents, {result.rate_hz:.1f} plans/s, p99 {result.latency_ms['p99']:.1f} ms, "
              f"{result.errors} errors -> {'sustained' if rows[-1]['sustained'] else 'behind'}", file=sys.stderr)
        if not rows[-1]["sustained"]:
            break
        best = rows[-1]
        agents *= 2
    return {"ladder": rows, "agents_sustained": best["agents"] if best else 0,
            "plans_per_s_sustained": best["plans_per_s"] if best else 0.0,
            "plans_per_s_peak": max(r["plans_per_s"] for r in rows)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        logs = str(Path(tmp, "logs"))
        say(f"collecting {args.collect_episodes} Nav2D episodes and training both models")
        wm("collect", "--env", "Nav2D-v0", "--episodes", str(args.collect_episodes), "--out", logs,
           "--seed", str(args.seed))
        epochs = ["--epochs", str(args.epochs)] if args.epochs else []
        ours = wm("train", "--data", logs, "--out", str(Path(tmp, "ours")), *MODEL, *epochs)
        article = wm("train", "--data", logs, "--out", str(Path(tmp, "article")), *ARTICLE_MODEL, *epochs)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        deadline = ["--deadline-ms", str(args.deadline_ms)] if args.deadline_ms else []
        serve_cmd = serve_command(ours["model_dir"], port, Path(tmp, "served-logs"), [*SERVED_PLANNER, *deadline])
        say(f"starting `wm serve` on {url}")
        counts = [int(a) for a in str(args.agents).split(",")]
        trace = FleetTrace() if args.png else None
        rows: list[dict[str, Any]] = []
        with running(serve_cmd, url, Path(tmp, "serve.log")):
            warm_up(url)
            for row, n in enumerate(counts):
                result = drive_row(fleet_config(url, n, args, args.seed + 1 + 1000 * row), say,
                                   trace if n == counts[-1] else None)
                rows.append({"agents": n} | _row(result))
        ours_result = result
        main_by_second = p99_by_second(trace) if trace is not None else None
        floor = None
        if args.floor:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            floor_cmd = serve_command(ours["model_dir"], port, Path(tmp, "floor-logs"), FLOOR_PLANNER)
            say(f"the serving path's floor: `wm serve` with {' '.join(FLOOR_PLANNER)} on {url}")
            floor_trace = FleetTrace(track_agents=0)
            with running(floor_cmd, url, Path(tmp, "floor.log")):
                warm_up(url)
                result = drive_row(fleet_config(url, counts[-1], args, args.seed + 1), say, floor_trace)
            floor = {"settings": {"serve": FLOOR_PLANNER, "telemetry": True}, "agents": counts[-1]} | _row(result) \
                | {"p99_ms_by_second": p99_by_second(floor_trace)}
        # `wm serve` flushed its telemetry when it stopped: what every row's agents sent came back as logs.
        logged = ds.dataset(str(Path(tmp, "served-logs")), format="parquet").count_rows()
        if trace is not None:
            from cluster.commands.fleet_report import plot_fleet

            plot_fleet(trace, Path(args.png), f"fleetwm Serve: {counts[-1]} Nav2D agents at {args.hz:g} Hz")

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        ref_cmd = [sys.executable, "-m", "benchmarks.serve_fleet", "--reference-server", article["model_dir"],
                   "--port", str(port)]
        say(f"starting the article's FastAPI service on {url}")
        with running(ref_cmd, url, Path(tmp, "reference.log")):
            warm_up(url)
            reference = reference_ladder(url, args.hz, args.reference_seconds, args.seed + 1, counts[-1])

    lat = ours_result.latency_ms
    target_met = (lat["p99"] <= TARGET["p99_ms"] and ours_result.errors == TARGET["errors"]
                  and ours_result.success_rate >= TARGET["success_rate"]
                  and ours_result.rate_per_agent_hz >= 0.95 * args.hz)
    return {"target": TARGET, "target_met": target_met,
            "fleetwm": {"stack": f"wm serve: Ray Serve + HAProxy, batched {' '.join(SERVED_PLANNER)}, 5x64x2 ensemble",
                        "settings": {"serve": [*SERVED_PLANNER, *deadline], "telemetry": True,
                                     "agents": counts[-1], "hz": args.hz,
                                     "seconds": args.seconds, "no_fly_zones": args.no_fly_zones,
                                     "deadline_ms": args.deadline_ms},
                        "transitions_logged": logged} | _row(ours_result)
                       | ({"p99_ms_by_second": main_by_second} if main_by_second is not None else {}),
            "serving_floor": floor,
            "fleetwm_by_agents": rows,
            "article": {"stack": "FastAPI + uvicorn, gradient MPC H15 (10 Adam steps), 1x64x2 MLP, "
                                 "one agent per request, 1 thread", "no_fly_zones": 0} | reference,
            "model_r2_min": ours["metrics"]["dynamics"]["r2_min"], "png": args.png}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", default="10,30,100", help="agent counts, the last one is the target's")
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--no-fly-zones", type=int, default=2)
    parser.add_argument("--deadline-ms", type=float, default=None, help="planning deadline sent to `wm serve`")
    parser.add_argument("--reference-seconds", type=float, default=10.0, help="per step of the reference ladder")
    parser.add_argument("--collect-episodes", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: wm train's)")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the serving path's floor (a planner that costs next to nothing)")
    parser.add_argument("--png", default=None, help="plot fleetwm's run (latency and paths) to this PNG")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="serve_fleet", help="results file name (smoke runs: another name)")
    parser.add_argument("--reference-server", default=None, metavar="MODEL_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_server:
        _serve_reference(args.reference_server, args.port)
        return
    record(args.name, run(args))


if __name__ == "__main__":
    main()
