"""Starting and stopping the fleet endpoint on a connected Ray, and the Serve settings it runs with.

Proxy: Serve's default proxy is a Python process that tops out near 450 requests/s on a
2-core machine; Serve's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``, the binary ships
with ray[serve]) carries several times that. fleetwm uses HAProxy unless told otherwise
(``wm serve --proxy python``).

Event loops: by default a Serve replica runs its handlers on a second thread's event loop and
its handles' router on a third, and every request crosses between them; ``SERVE_LOOPS`` keeps
both on the replica's own loop (Serve's documented throughput flags). Handlers must then never
block the loop, and fleetwm's hand all blocking work (planning, registry reads) to threads.

Fixed ports: besides the endpoint's port, Serve on a node listens on ports of its own, the same on
every node: HAProxy's stats page and Prometheus metrics (8404, 9101, on every interface, whatever the
HTTP host: Serve's config template binds them to ``*``) and the fallback proxy behind HAProxy
(8500, 9500), which HAProxy sends requests to while the ingress replica is not up. Two endpoints on
one machine would collide on them, or worse, one's HAProxy would fall back to the other's app.
``wm serve`` on a local Ray therefore gives each its own free ones (``serve_env``'s ``local_ports``);
a cluster node runs one Serve and keeps the fixed ports its scrapers expect. The ingress replicas'
own ports are allocated by Serve from 30000 up and bound exclusively (a taken one is skipped),
Serve's HAProxy files live under ``/tmp/haproxy-serve/NODE_ID/``, one directory per Ray node,
and Ray's named actors per Ray instance, so two local Rays share none of those.

All of these are read by Ray's processes when they start, so they must be in their environment
before Serve starts: ``serve_env`` gives the variables, ``wm serve`` puts them into the local Ray it
starts, and ``ray_cluster.yaml`` sets them on every node.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Any, Callable, Sequence

import ray
import requests
from ray import serve
from ray.exceptions import GetTimeoutError, RayError

from actors.common import find_actor
from actors.state import StateConfig
from serving.app import build
from serving.config import AppConfig

PROXIES = ("haproxy", "python")
APP_NAME = "fleetwm"


SERVE_LOOPS = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
"""A replica's handlers and its handles' router on the replica's own event loop (see the module docstring)."""
SERVE_QUIET = {"RAY_SERVE_HAPROXY_METRICS_ENABLED": "0"}
"""HAProxy's per-request log line to Serve's metrics actor, which parses it in Python: off. The ingress
replica counts the same requests and latencies itself, and fleetwm's own metrics are unaffected."""


LOCAL_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
               "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")
"""Serve's fixed ports on a node (see the module docstring), which an endpoint on a local Ray gets free."""
LOCAL_DRAIN = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}
"""On one machine HAProxy is the only balancer in front of the ingress, and it stops routing to a
stopping replica within two failed health checks (2 x 250 ms); Serve's default drain (30 s, for
external balancers such as a cloud ALB to deregister it) would only delay a local endpoint's stop."""


def serve_env(proxy: str = "haproxy", local_ports: Sequence[int] | None = None) -> dict[str, str]:
    """Environment variables for the Ray processes that run the endpoint: the HTTP proxy, and
    ``SERVE_LOOPS`` and ``SERVE_QUIET`` (and on a local Ray ``LOCAL_DRAIN``) unless this process's
    environment already sets them.

    Args:
        proxy: one of ``PROXIES``.
        local_ports: for an endpoint on a local Ray, free ports for ``LOCAL_PORTS``, in that order;
            None (a cluster) keeps Serve's fixed ports and its drain period.
    """
    if proxy not in PROXIES:
        raise ValueError(f"proxy must be one of {', '.join(PROXIES)}, got {proxy!r}")
    if local_ports is not None and len(local_ports) != len(LOCAL_PORTS):
        raise ValueError(f"local_ports must give {len(LOCAL_PORTS)} ports ({', '.join(LOCAL_PORTS)}), "
                         f"got {list(local_ports)}")
    defaults = {**SERVE_LOOPS, **SERVE_QUIET, **(LOCAL_DRAIN if local_ports else {})}
    env = {**defaults, **{k: os.environ[k] for k in defaults if k in os.environ},
           "RAY_SERVE_ENABLE_HA_PROXY": "1" if proxy == "haproxy" else "0"}
    return env | dict(zip(LOCAL_PORTS, map(str, local_ports or ())))


def deploy(model: str, *, port: int, host: str = "127.0.0.1", timeout_s: float = 120.0, **settings: Any) -> str:
    """Run the fleet endpoint on the connected Ray and wait until it answers; returns its base URL.

    Args:
        model / settings: ``AppConfig`` fields (``registry_uri``, ``token``, ``state``, ``batching``, ...);
            a setting given as None keeps its field's default.
        port / host: Serve's HTTP options.
        timeout_s: how long to wait for the endpoint to answer.
    """
    if not ray.is_initialized():
        raise RuntimeError("connect to Ray first (cluster.runtime.init_ray)")
    cfg = AppConfig(model=model, **{k: v for k, v in settings.items() if v is not None})
    serve.start(http_options={"host": host, "port": port})
    serve.run(build(cfg.to_dict()), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{host}:{port}"
    _wait_ready(url, timeout_s)
    return url


def _wait_ready(url: str, timeout_s: float) -> None:
    # /healthz takes no bearer token, so this works whether or not the app requires one.
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{url}/healthz", timeout=2.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except requests.RequestException as err:
            last = str(err)
        time.sleep(0.2)
    raise TimeoutError(f"the fleet endpoint at {url} was not ready after {timeout_s:.0f} s ({last})")


def shutdown_app(state: StateConfig | None = None, telemetry_name: str | None = None, timeout_s: float = 30.0,
                 *, telemetry_stream: str | None = None) -> dict[str, Any]:
    """Delete the app, flush the telemetry log, and stop the agent-state shards (their snapshots stay),
    within about ``timeout_s`` whatever the logger does.

    Args:
        state / telemetry_name: the app's ``AppConfig.state`` and ``AppConfig.telemetry_name`` (None:
            their defaults), which name the actors to flush and stop.
        telemetry_stream: with the fleet bus (``AppConfig.redis_url``), the telemetry stream the app's
            logger (a ``StreamLogger``, same name and interface) reads. What it did not write stays
            pending there, acknowledged only once written, so the next logger on that stream writes it
            (`wm serve` again, or `wm ingest`); without the bus, what the logger held is lost.

    Returns:
        ``telemetry``: the logger's ``LoggerStats`` as a dict after its last flush (totals over the run,
        restarts included; None when telemetry was off or the logger did not answer); ``not_written``:
        transitions the logger still held when it stopped (None when unknown); ``unwritten_pending_in``:
        ``telemetry_stream`` when there were such transitions and they wait there (not lost), else None;
        ``problems``: one line per step that failed or did not finish in time.
    """
    deadline = time.monotonic() + timeout_s
    problems = []
    # Half the time for Serve's graceful stop of the replicas (their last transitions reach the
    # logger then), the rest for the log.
    problem = _within(lambda: serve.delete(APP_NAME), timeout_s / 2)
    if problem:
        problems.append(f"deleting the app: {problem}")
    stats, not_written = None, None
    telemetry = find_actor(telemetry_name or AppConfig.telemetry_name)
    if telemetry is not None:  # None: telemetry was off
        stats, not_written = _last_flush(telemetry, deadline, problems, telemetry_stream)
        ray.kill(telemetry, no_restart=True)
    for name in (state or StateConfig()).shard_names:
        shard = find_actor(name)
        if shard is not None:
            ray.kill(shard, no_restart=True)
    pending_in = telemetry_stream if telemetry is not None and not_written != 0 else None
    return {"telemetry": stats, "not_written": not_written, "unwritten_pending_in": pending_in, "problems": problems}


_STATS_S = 5.0
"""How long the logger's last ``stats`` call may take."""


def _last_flush(telemetry: Any, deadline: float, problems: list[str],
                stream: str | None) -> tuple[dict[str, Any] | None, int | None]:
    """Flush the logger with what is left of the time (its flush returns when that ends, written or
    not), then read its totals. Returns (``LoggerStats`` as a dict, rows not written); None where the
    logger did not answer. ``stream``: where a ``StreamLogger``'s unwritten rows wait (``shutdown_app``)."""
    budget = max(deadline - time.monotonic() - _STATS_S, 1.0)
    not_written = None
    kept = f" (still pending in Redis stream {stream}: not lost, the next logger on it writes them)" if stream else ""
    try:
        flushed = ray.get(telemetry.flush.remote(timeout_s=budget), timeout=budget + _STATS_S)
        not_written = flushed.unwritten
        if flushed.error:
            problems.append(f"telemetry: {flushed.unwritten} transitions not written{kept}: {flushed.error}")
    except (GetTimeoutError, RayError) as err:
        problems.append(f"telemetry: the last flush did not finish{kept}: {_last_line(err)}")
    try:
        stats = dataclasses.asdict(ray.get(telemetry.stats.remote(), timeout=_STATS_S))
    except (GetTimeoutError, RayError) as err:
        problems.append(f"telemetry: the logger did not report its totals: {_last_line(err)}")
        return None, not_written
    return stats, stats["buffered"] if not_written is None else not_written


def _last_line(err: BaseException) -> str:
    """The line that says what went wrong: a Ray task error's text ends with the remote exception."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(err).__name__


def _within(step: Callable[[], object], timeout_s: float) -> str | None:
    """Run ``step`` on a daemon thread for at most ``timeout_s``; returns None when it finished, else
    one line saying what went wrong (it raised, or it was still running)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            step()
        except BaseException as err:  # handed to the caller, which reports it
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True, name="fleetwm-shutdown")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return f"still running after {timeout_s:.0f} s"
    return f"{type(errors[0]).__name__}: {_last_line(errors[0])}" if errors else None
