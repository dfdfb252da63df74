"""Starting and stopping the fleet endpoint on a connected Ray, and the Serve settings it runs with.

Proxy: Serve's default proxy is a Python process that tops out near 450 requests/s on a
2-core machine; Serve's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``, the binary ships
with ray[serve]) carries several times that. fleetwm uses HAProxy unless told otherwise
(``wm serve --proxy python``).

Event loops: by default a Serve replica runs its handlers on a second thread's event loop and
its handles' router on a third, and every request crosses between them; ``SERVE_LOOPS`` keeps
both on the replica's own loop (Serve's documented throughput flags). Handlers must then never
block the loop, and fleetwm's hand all blocking work (planning, registry reads) to threads.

Both are read by Ray's processes when they start, so they must be in their environment before
Serve starts: ``serve_env`` gives the variables, ``wm serve`` puts them into the local Ray it
starts, and ``ray_cluster.yaml`` sets them on every node.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray
import requests
from ray import serve

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


def serve_env(proxy: str = "haproxy") -> dict[str, str]:
    """Environment variables for the Ray processes that run the endpoint: the HTTP proxy, and
    ``SERVE_LOOPS`` and ``SERVE_QUIET`` unless this process's environment already sets them."""
    if proxy not in PROXIES:
        raise ValueError(f"proxy must be one of {', '.join(PROXIES)}, got {proxy!r}")
    return {**SERVE_LOOPS, **SERVE_QUIET, **{k: os.environ[k] for k in (*SERVE_LOOPS, *SERVE_QUIET) if k in os.environ},
            "RAY_SERVE_ENABLE_HA_PROXY": "1" if proxy == "haproxy" else "0"}


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


def shutdown_app(state: StateConfig | None = None, telemetry_name: str = "fleetwm-telemetry") -> dict[str, Any]:
    """Delete the app, flush the telemetry log, and stop the agent-state shards (their snapshots stay).

    Returns the telemetry logger's final counts (None when telemetry was off).
    """
    serve.delete(APP_NAME)
    stats = None
    telemetry = find_actor(telemetry_name)
    if telemetry is not None:  # None: telemetry was off
        ray.get(telemetry.flush.remote())
        stats = ray.get(telemetry.stats.remote())
        ray.kill(telemetry, no_restart=True)
    for name in (state or StateConfig()).shard_names:
        shard = find_actor(name)
        if shard is not None:
            ray.kill(shard, no_restart=True)
    return {"telemetry": stats}
