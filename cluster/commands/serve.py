"""`wm serve`: the fleet endpoint on a local Ray (embedded) or a cluster.

Agent state (each agent's episode, step and warm start) lives in shard actors. What a failure
costs, per setting (in every setting an agent idle for ``StateConfig.ttl_s``, 1 h, is forgotten):

- ``--state-dir DIR`` (default on a local Ray: ``$XDG_CACHE_HOME/fleetwm/agent-state/HOST-PORT``,
  ``~/.cache`` when unset; on a cluster it must be given, as a URI every node reaches): each shard
  snapshots its table every ``StateConfig.snapshot_interval_s`` (1 s), and Ray restarts a crashed
  shard from its snapshot, so a crash loses at most that last second of updates; a restart on the
  same host and port picks up the agents its snapshots hold.
- ``--no-state-dir``: no snapshots; a shard crash or a restart loses every agent's state, and each
  agent's next request starts a new episode with a cold plan (its pending transition is not logged).

Ports: the endpoint's ``--port`` is checked before Ray starts (a port in use is a one-line error that
names the holder where it can), and on a local Ray, Serve's own fixed ports (HAProxy's stats and
metrics, the fallback proxy) are chosen free (``serving.deploy``), so several `wm serve` run side by
side on one machine.

The fleet bus (``--redis``, ``serving.bus``): agents plan through Redis Streams beside HTTP, and served
transitions reach the logs through the telemetry stream, so a logger crash loses none of them. ``local``
(the default) starts a redis-server owned by this command before the app (a free port on 127.0.0.1, AOF
on, data in ``$XDG_CACHE_HOME/fleetwm/redis/HOST-PORT``: a restart on the same host and port replays what
it held, pending telemetry included) and stops it after the app; a URL uses that server (checked before Ray
starts); ``none`` serves over HTTP only and logs through the logger actor's memory. A cluster's nodes
share no local server: with ``--address`` give the head node's (``ray_cluster.yaml`` runs it on port 6380).

Shutdown: SIGTERM or Ctrl-C deletes the app, flushes the telemetry log and stops the shards within
``serving.deploy.shutdown_app``'s bound (30 s) whatever the logger does, then stops an owned redis-server;
the result says how many transitions were not written, why, and whether they wait in Redis (not lost).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.commands.plan import add_planner_setting_option, planner_settings
from learners.settings import DriftSettings
from planners.config import DEFAULT_PLANNER, PLANNER_NAMES, PlanConfig
from planners.config import FleetPlanConfig
from worldmodel.envs.warehouse import DEFAULT_ROBOTS

if TYPE_CHECKING:
    from actors.redis_server import BusServer

PLAN = PlanConfig()  # the served planner settings' defaults (planners.config: one place)
FLEET = FleetPlanConfig()  # a warehouse floor's (planners.config)
REDIS_LOCAL, REDIS_NONE = "local", "none"
DEFAULT_REDIS = REDIS_LOCAL
"""`wm serve` and `wm demo` run the fleet bus on a redis-server of their own unless told otherwise."""


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="serve next actions for a fleet over HTTP (Ray Serve)",
                       description=__doc__.split("\n\n", 1)[0])
    add_serve_options(p)
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--detach", action="store_true",
                   help="with --address: leave the app running on the cluster and return")
    p.set_defaults(handler=run_serve)


def add_serve_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `wm serve` and `wm demo`. Options whose default is None keep the app's
    (``serving.config.AppConfig``) or the planner's (``planners.config``)."""
    p.add_argument("--model", default="production",
                   help="model directory, or with --registry a version or stage (default: production)")
    p.add_argument("--registry", default=None, help="model registry directory or URI")
    p.add_argument("--shadow", default=None, help="with --registry: version or stage to run in shadow")
    p.add_argument("--ab", action="store_true",
                   help="with --registry: deploy the live A/B candidate planner, which serves the share of agents "
                        "of the registry's A/B test (`wm models ab VERSION --share S`) while one runs")
    p.add_argument("--reward-model", default=None, metavar="VERSION",
                   help="with --registry: the fleet's reward model (e.g. r1.2.0, `wm reward list`), planned with "
                        "unless a request names another (default: the world model's own reward)")
    p.add_argument("--log-dir", default=None,
                   help="append served transitions to this log directory or URI (checked writable at start)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (0.0.0.0 on a cluster)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    p.add_argument("--proxy", default="haproxy",
                   help="Serve's HTTP proxy: haproxy (default, fast) or python (Serve's Python proxy)")
    p.add_argument("--planner", choices=PLANNER_NAMES, default=DEFAULT_PLANNER, help="(default: %(default)s)")
    p.add_argument("--horizon", type=int, default=None,
                   help=f"(default: {PLAN.horizon}; Warehouse-v1 floors: {FLEET.horizon})")
    p.add_argument("--samples", type=int, default=None,
                   help=f"(default: {PLAN.samples}; Warehouse-v1 floors: {FLEET.samples})")
    p.add_argument("--iterations", type=int, default=None,
                   help=f"CEM rounds per request (default: {PLAN.iterations}; 1 suffices with warm starts)")
    p.add_argument("--robots", type=int, default=None,
                   help=f"Warehouse-v1: the served floor is the one sized for N robots (default: {DEFAULT_ROBOTS})")
    add_planner_setting_option(p)
    p.add_argument("--deadline-ms", type=float, default=None,
                   help="deadline for requests that give none, from the request's arrival (default: the app's)")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--state-dir", default=None,
                       help="snapshot agent state here every second: a shard crash loses at most the last "
                            "second of agent updates (default on a local Ray: a directory per host and port "
                            "under ~/.cache/fleetwm/agent-state; with --address, one of the two is required)")
    state.add_argument("--no-state-dir", action="store_true",
                       help="no snapshots: a shard crash or a restart loses every agent's state")
    p.add_argument("--access-log", action="store_true",
                   help="write Serve's line per request to the replica logs (off: at fleet rates it costs 5%% "
                        "of requests/s; latency and status counts are in the metrics)")
    p.add_argument("--max-batch-size", type=int, default=None, help="(default: the app's)")
    p.add_argument("--batch-wait-ms", type=float, default=None, help="(default: the app's)")
    add_redis_option(p, "~/.cache/fleetwm/redis/HOST-PORT")
    p.add_argument("--consumer-replicas", type=int, default=None, metavar="N",
                   help="stream consumer replicas reading the bus's requests as one group (default: the app's)")
    p.add_argument("--drift-sustain-s", type=float, default=None, metavar="S",
                   help="ask the retrain scheduler (wm learn --schedule) for a retrain once the production "
                        "version's windowed prediction MSE has stayed above the alert's threshold this long "
                        f"(default: {DriftSettings.sustain_s:g})")
    p.add_argument("--no-drift-retrain", action="store_true", help="do not watch the prediction MSE for drift")


def add_redis_option(p: argparse.ArgumentParser, local_dir: str) -> None:
    """``--redis local|URL|none`` (default ``DEFAULT_REDIS``) for a command that runs the app on a local Ray."""
    p.add_argument("--redis", default=DEFAULT_REDIS, metavar="local|URL|none",
                   help=f"the fleet bus: '{REDIS_LOCAL}' (default) starts a redis-server owned by this command "
                        f"(free port, AOF on, data in {local_dir}) and stops it after the app; a "
                        "redis://[:PASSWORD@]HOST:PORT/DB URL uses that server (on a cluster the head node's, "
                        f"port 6380: ray_cluster.yaml); '{REDIS_NONE}': HTTP only, telemetry through the "
                        "logger's memory (a logger crash loses what it holds)")


def default_state_dir(host: str, port: int) -> Path:
    """Where `wm serve` snapshots agent state unless told: one directory per host and port, so two
    endpoints never share snapshots and a restart on the same port finds its own."""
    return _cache_dir("agent-state", host, port)


def default_redis_dir(host: str, port: int) -> Path:
    """Where `wm serve --redis local` keeps its redis-server's data (AOF), per host and port like agent state."""
    return _cache_dir("redis", host, port)


def _cache_dir(kind: str, host: str, port: int) -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "fleetwm" / kind / f"{host}-{port}"


def state_dir(args: argparse.Namespace) -> str | None:
    """The snapshot directory or URI the options choose (None with --no-state-dir).

    Raises:
        ValueError: on a cluster (--address) without either option: a directory on this machine is
            no place for shards running on other nodes, and no snapshots must be chosen knowingly.
    """
    if args.no_state_dir:
        return None
    if args.state_dir:
        return str(args.state_dir)
    if getattr(args, "address", None):
        raise ValueError("with --address, pass --state-dir URI (storage every node reaches, e.g. s3://...) "
                         "for agent state, or --no-state-dir to run without snapshots")
    return str(default_state_dir(args.host, args.port))


def redis_choice(choice: str, address: str | None) -> str:
    """``--redis``'s value checked: ``REDIS_LOCAL``, ``REDIS_NONE`` or a Redis URL (not yet reached).

    Raises:
        ValueError: anything else, or ``local`` on a cluster (``address``), whose nodes cannot reach a
            redis-server this machine owns and stops.
    """
    if choice == REDIS_LOCAL and address:
        raise ValueError("--redis local starts a redis-server on this machine, which the cluster's nodes do not "
                         "share: with --address pass --redis URL (the head node's, redis://:PASSWORD@HEAD_IP:6380/0 "
                         "as ray_cluster.yaml runs it) or --redis none")
    from serving.config import REDIS_SCHEMES

    if choice not in (REDIS_LOCAL, REDIS_NONE) and not choice.startswith(REDIS_SCHEMES):
        raise ValueError(f"--redis takes {REDIS_LOCAL}, {REDIS_NONE} or a redis://HOST:PORT/DB URL, got {choice!r}")
    return choice


def fleet_bus(choice: str, data_dir: Path, check: bool = True) -> contextlib.AbstractContextManager[BusServer | None]:
    """The Redis ``choice`` (``redis_choice``'s) names, as a context manager giving an
    ``actors.redis_server.BusServer`` or None for ``none``: for ``local`` a redis-server started in
    ``data_dir`` and stopped when the block ends, however it ends; a URL checked reachable when ``check``."""
    from actors.redis_server import serve_bus

    if choice == REDIS_NONE:
        return contextlib.nullcontext(None)
    return serve_bus(None if choice == REDIS_LOCAL else choice, data_dir, check=check)


def app_kwargs(args: argparse.Namespace, snapshot_uri: str | None) -> dict[str, Any]:
    """``deploy`` keyword arguments from the shared options (None keeps the app's default)."""
    from actors.state import StateConfig
    from serving.config import BATCHING

    if args.shadow and not args.registry:
        raise ValueError("--shadow needs --registry (it names a version or stage in the registry)")
    if args.ab and not args.registry:
        raise ValueError("--ab needs --registry (the candidate planner follows the registry's A/B test)")
    if args.consumer_replicas is not None and (args.redis == REDIS_NONE or args.consumer_replicas < 1):
        raise ValueError(f"--consumer-replicas {args.consumer_replicas}: stream consumers need the bus (--redis "
                         "local or URL) and at least one replica")
    batching = dict(BATCHING)
    if args.max_batch_size is not None:
        batching["max_batch_size"] = args.max_batch_size
    if args.batch_wait_ms is not None:
        batching["batch_wait_timeout_s"] = args.batch_wait_ms / 1000
    return {"model": args.model if args.registry else os.path.abspath(args.model), "registry_uri": args.registry,
            "shadow": args.shadow, "ab": args.ab, "log_uri": args.log_dir, "host": args.host, "port": args.port,
            "state": StateConfig(snapshot_uri=snapshot_uri),
            "service": service_settings(args),
            "default_deadline_ms": args.deadline_ms, "access_log": args.access_log, "batching": batching,
            "consumer_replicas": args.consumer_replicas, "drift": drift_settings(args)}


def drift_settings(args: argparse.Namespace) -> DriftSettings:
    """The served drift watch's settings from ``--drift-sustain-s`` and ``--no-drift-retrain``."""
    if args.drift_sustain_s is None:
        return DriftSettings(enabled=not args.no_drift_retrain)
    try:
        return DriftSettings(enabled=not args.no_drift_retrain, sustain_s=args.drift_sustain_s)
    except ValueError as err:  # the message names the settings' fields: say which flag set them
        raise ValueError(f"--drift-sustain-s {args.drift_sustain_s:g}: {err}") from None


def service_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The planner service's settings (``planners.served.ServiceConfig.from_dict``) from the flags given; a
    flag not given keeps the served planner's own default: lone agents' ``PlanConfig``, floors' ``FleetPlanConfig``,
    camera models' ``LATENT_PLAN``."""
    given = {k: getattr(args, k) for k in ("horizon", "samples", "iterations") if getattr(args, k) is not None}
    service: dict[str, Any] = {"planner": args.planner, "plan": given, "fleet": given, "latent": given,
                               "settings": planner_settings(args) if args.planner_opt else None}
    if args.reward_model is not None:
        if not args.registry:
            raise ValueError("--reward-model needs --registry (reward models are registered under its rewards/)")
        service["reward_model"] = args.reward_model
    return service | ({"floor_robots": args.robots} if args.robots is not None else {})


def check_locations(args: argparse.Namespace, snapshot_uri: str | None) -> None:
    """Fail before Ray starts when the endpoint could not listen or write where it is told to."""
    from cluster.runtime import check_port_free

    if not args.address:  # on a cluster the port is the nodes', not this machine's
        check_port_free(args.host, args.port)
    if snapshot_uri and not args.state_dir:  # the default directory is ours to create
        os.makedirs(snapshot_uri, exist_ok=True)
    locations = [uri for uri in (args.log_dir, snapshot_uri) if uri]
    if locations:
        from worldmodel.data.writer import check_writable  # pyarrow: loaded only when there is one

        for uri in locations:
            check_writable(uri)


def start_ray_for_serving(address: str | None, proxy: str) -> None:
    """Connect (or start a local Ray) with the endpoint's Serve settings in every Ray process's environment.

    A local Ray's Serve gets free ports for its fixed ones (``serving.deploy.LOCAL_PORTS``: free on
    every interface, where HAProxy binds its own), so endpoints started side by side on one machine
    neither collide nor fall back to each other, and the short drain of ``serving.deploy.LOCAL_DRAIN``.
    """
    from actors.ports import free_ports
    from cluster.runtime import init_ray
    from serving.deploy import LOCAL_PORTS, serve_env

    local = (address or os.environ.get("RAY_ADDRESS")) in (None, "", "local")
    env = serve_env(proxy, free_ports(len(LOCAL_PORTS), "0.0.0.0") if local else None)
    os.environ.update(env)  # a local Ray's processes inherit it from here
    init_ray(address, extra_env=env)


def run_serve(args: argparse.Namespace) -> dict[str, Any]:
    if args.detach and not args.address:
        raise ValueError("--detach needs --address: an app on a local Ray ends with this command")
    if not args.registry and not os.path.isdir(args.model):
        raise FileNotFoundError(f"--model {args.model}: no such model directory (or pass --registry)")
    snapshot_uri = state_dir(args)
    choice = redis_choice(args.redis, args.address)
    check_locations(args, snapshot_uri)
    kwargs = app_kwargs(args, snapshot_uri)
    if args.reward_model is not None:  # refused here in one line, not by the planner replica's start
        from cluster.commands.reward import check_served_reward

        check_served_reward(args.registry, args.model, args.reward_model)
    # Through a Ray client (ray://) the nodes reach the bus, not this machine: nothing to check from here.
    remote = str(args.address or "").startswith("ray://")
    with fleet_bus(choice, default_redis_dir(args.host, args.port), check=not remote) as bus:
        kwargs["redis_url"] = bus.url if bus else None
        result = _serve(args, kwargs, bus)
    if bus is not None and bus.owned:
        result.setdefault("_summary", []).append(
            f"redis: the redis-server at {bus.shown()['url']} stopped; its AOF stays in {bus.data_dir}, "
            "replayed by the next `wm serve` on this host and port")
    return result


def _serve(args: argparse.Namespace, kwargs: dict[str, Any], bus: BusServer | None) -> dict[str, Any]:
    """Start Ray and the app ``kwargs`` describes; return at once with --detach, else serve until SIGTERM
    or Ctrl-C and stop the app (``_stop``)."""
    from serving.config import TOKEN_ENV
    from serving.deploy import deploy

    start_ray_for_serving(args.address, args.proxy)
    # Installed after Ray's own (ray.init sets one) and before deploying: a SIGTERM while the app
    # comes up (it answers before deploy returns) then stops it cleanly once it is up.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    url = deploy(**kwargs, token=os.environ.get(TOKEN_ENV))
    redis = bus.shown() if bus else None
    on_bus = "no fleet bus (--redis none)" if redis is None else \
        f"fleet bus at {redis['url']}" + (f" (started here, data in {redis['data_dir']})" if redis["owned"] else "")
    print(f"wm serve: fleet endpoint at {url} (OpenAPI at {url}/docs), {on_bus}; Ctrl-C stops it", file=sys.stderr)
    result: dict[str, Any] = {"url": url, "proxy": args.proxy, "state_dir": kwargs["state"].snapshot_uri,
                              "redis": redis}
    if args.detach:
        return result | {"detached": True}
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    return _stop(result, kwargs)


def _stop(result: dict[str, Any], app: dict[str, Any]) -> dict[str, Any]:
    """Shut the app that ``deploy(**app)`` started down (bounded: its telemetry logger and shards, by
    the names its settings give them) and add what it says to ``result``, with a readable summary."""
    from serving.deploy import shutdown_app

    print("wm serve: stopping", file=sys.stderr, flush=True)
    start = time.monotonic()
    result |= shutdown_app(app.get("state"), app.get("telemetry_name"), telemetry_stream=telemetry_stream(app))
    result["stopped_in_s"] = round(time.monotonic() - start, 1)
    stats, lost, kept_in = result["telemetry"], result["not_written"], result["unwritten_pending_in"]
    lines = [f"wm serve: {result['url']} stopped in {result['stopped_in_s']} s"]
    if stats is not None:
        lines.append(f"telemetry: {stats['written']} transitions written in {stats['files']} files, "
                     f"{lost} not written" + (f" (pending in Redis stream {kept_in}: not lost)" if kept_in else "")
                     + f", {stats['dropped']} dropped"
                     + (f" (last error: {stats['last_error']})" if stats["last_error"] else ""))
    lines += [f"problem: {p}" for p in result["problems"]]
    result["_summary"] = lines
    return result


def telemetry_stream(app: dict[str, Any]) -> str | None:
    """The telemetry stream the app ``deploy(**app)`` started logs through (None: no bus, or no telemetry)."""
    if not (app.get("redis_url") and app.get("log_uri")):
        return None
    from actors.streams import BusNames
    from serving.config import AppConfig

    return BusNames(app.get("bus_prefix") or AppConfig.bus_prefix).telemetry
