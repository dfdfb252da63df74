"""`wm serve`: the fleet endpoint on a local Ray (embedded) or a cluster."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

from actors.state import StateConfig
from cluster.commands.plan import add_planner_setting_option, planner_settings
from cluster.runtime import init_ray
from planners import PLANNERS
from planners.service import ServiceConfig
from serving.config import BATCHING, TOKEN_ENV
from serving.deploy import PROXIES, deploy, serve_env, shutdown_app


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="serve next actions for a fleet over HTTP (Ray Serve)")
    add_serve_options(p)
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--detach", action="store_true",
                   help="with --address: leave the app running on the cluster and return")
    p.set_defaults(handler=run_serve)


def add_serve_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `wm serve` and `wm demo`."""
    p.add_argument("--model", default="production",
                   help="model directory, or with --registry a version or stage (default: production)")
    p.add_argument("--registry", default=None, help="model registry directory or URI")
    p.add_argument("--shadow", default=None, help="with --registry: version or stage to run in shadow")
    p.add_argument("--log-dir", default=None, help="append served transitions to this log directory or URI")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (0.0.0.0 on a cluster)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--proxy", choices=PROXIES, default="haproxy",
                   help="Serve's HTTP proxy: HAProxy (default, fast) or Serve's Python proxy")
    served = ServiceConfig()  # the defaults: the setting that reaches the Nav2D target (README)
    p.add_argument("--planner", choices=sorted(PLANNERS), default=served.planner)
    p.add_argument("--horizon", type=int, default=served.plan.horizon)
    p.add_argument("--samples", type=int, default=served.plan.samples)
    p.add_argument("--iterations", type=int, default=served.plan.iterations,
                   help="CEM rounds per request (1 suffices with warm starts: README, serving results)")
    add_planner_setting_option(p)
    p.add_argument("--deadline-ms", type=float, default=None,
                   help="planning deadline for requests that give none (default: none)")
    p.add_argument("--state-dir", default=None, help="snapshot agent state here (default: no snapshots)")
    p.add_argument("--access-log", action="store_true",
                   help="write Serve's line per request to the replica logs (off: at fleet rates it costs 5%% "
                        "of requests/s; latency and status counts are in the metrics)")
    p.add_argument("--max-batch-size", type=int, default=BATCHING["max_batch_size"])
    p.add_argument("--batch-wait-ms", type=float, default=BATCHING["batch_wait_timeout_s"] * 1000)


def app_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``deploy`` keyword arguments from the shared options."""
    if args.shadow and not args.registry:
        raise ValueError("--shadow needs --registry (it names a version or stage in the registry)")
    return {"model": args.model if args.registry else os.path.abspath(args.model), "registry_uri": args.registry,
            "shadow": args.shadow, "log_uri": args.log_dir, "host": args.host, "port": args.port,
            "state": StateConfig(snapshot_uri=args.state_dir),
            "service": {"planner": args.planner, "plan": {"horizon": args.horizon, "samples": args.samples,
                                                          "iterations": args.iterations},
                        # None keeps the served defaults (planners.service.SERVED_CEM for CEM).
                        "settings": planner_settings(args) if args.planner_opt else None},
            "default_deadline_ms": args.deadline_ms, "access_log": args.access_log,
            "batching": {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_ms / 1000}}


def start_ray_for_serving(address: str | None, proxy: str) -> None:
    """Connect (or start a local Ray) with the endpoint's Serve settings in every Ray process's environment."""
    env = serve_env(proxy)
    os.environ.update(env)  # a local Ray's processes inherit it from here
    init_ray(address, extra_env=env)


def run_serve(args: argparse.Namespace) -> dict[str, Any]:
    if args.detach and not args.address:
        raise ValueError("--detach needs --address: an app on a local Ray ends with this command")
    if not args.registry and not os.path.isdir(args.model):
        raise FileNotFoundError(f"--model {args.model}: no such model directory (or pass --registry)")
    kwargs = app_kwargs(args)
    start_ray_for_serving(args.address, args.proxy)
    # Installed after Ray's own (ray.init sets one) and before deploying: a SIGTERM while the app
    # comes up (it answers before deploy returns) then stops it cleanly once it is up.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    url = deploy(**kwargs, token=os.environ.get(TOKEN_ENV))
    print(f"wm serve: fleet endpoint at {url} (OpenAPI at {url}/docs); Ctrl-C stops it", file=sys.stderr)
    result: dict[str, Any] = {"url": url, "proxy": args.proxy}
    if args.detach:
        return result | {"detached": True}
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    result |= shutdown_app(kwargs["state"])
    return result
