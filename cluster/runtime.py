"""Connecting to Ray: one helper for a cluster address or an embedded local Ray.

Every command and test that needs Ray goes through ``init_ray``, so the namespace
(where named actors live), the runtime environment the workers need, and the
authentication mode are decided in one place.

Authentication: Ray's token mode is switched by ``RAY_AUTH_MODE`` (``token`` or
``disabled``) and read by every Ray process. A cluster started by ``ray up`` from
``ray_cluster.yaml`` runs with ``RAY_AUTH_MODE=token``; the client then needs the
same token in ``RAY_AUTH_TOKEN`` (or ``~/.ray/auth_token``). Since Ray 2.59 an embedded
local Ray uses token mode too (generating a token in ``~/.ray``) unless the variable
says otherwise; tests set it explicitly.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import ray

from actors.common import NAMESPACE

# Worker processes run one torch thread each: Ray packs many actors onto a node and each
# would otherwise start one thread per core, oversubscribing the CPUs many times over.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class RayInfo:
    """What ``init_ray`` connected to."""

    address: str
    """The GCS address of the cluster ('local' details are in ``dashboard_url``)."""
    started: bool
    """True when this process started an embedded local Ray (and should shut it down)."""
    dashboard_url: str | None
    resources: dict[str, float]

    @property
    def gpus(self) -> float:
        return self.resources.get("GPU", 0.0)


def free_port() -> int:
    """A TCP port nothing listens on right now (for local Ray, Serve and test servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def runtime_env(extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The runtime environment of fleetwm's workers: thread caps plus ``extra_env``.

    The code itself is installed on every node (``ray_cluster.yaml``'s setup commands, or the
    local venv), so no working directory is shipped.
    """
    return {"env_vars": {**WORKER_ENV, **(extra_env or {})}}


def init_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
             object_store_mb: int | None = None, dashboard: bool = False,
             extra_env: dict[str, str] | None = None, log_to_driver: bool = False) -> RayInfo:
    """Connect to ``address`` (``auto``, ``ray://host:10001`` or ``host:6379``), or start a local Ray.

    Calling it again in a process that is already connected reuses the connection.

    Args:
        address: cluster address; None (or ``local``) starts an embedded Ray on this machine.
        num_cpus / num_gpus: resources of an embedded Ray (default: what the machine has).
        object_store_mb: object store size of an embedded Ray (default: Ray's, 30% of memory).
        dashboard: start the dashboard with an embedded Ray.
        extra_env: more environment variables for the workers.
        log_to_driver: stream worker logs to this process's stderr.
    """
    if ray.is_initialized():
        return _info(started=False)
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "runtime_env": runtime_env(extra_env),
                              "log_to_driver": log_to_driver}
    address = address or os.environ.get("RAY_ADDRESS")  # as `ray job submit` sets it for the job's driver
    local = address in (None, "", "local")
    if local:
        store = None if object_store_mb is None else object_store_mb * 1024 * 1024
        # address='local' always starts a new Ray: without it, ray.init joins a cluster it finds
        # running on this machine (another command's, another test run's).
        context = ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=store,
                           include_dashboard=dashboard,
                           dashboard_port=free_port() if dashboard else None, **kwargs)
    else:
        if num_cpus is not None or num_gpus is not None:
            raise ValueError("num_cpus / num_gpus describe an embedded Ray; a cluster at "
                             f"{address!r} brings its own resources")
        context = ray.init(address=address, **kwargs)
    dashboard_url = getattr(context, "dashboard_url", None) or None
    return _info(started=local, dashboard_url=dashboard_url)


def _info(started: bool, dashboard_url: str | None = None) -> RayInfo:
    context = ray.get_runtime_context()
    return RayInfo(address=context.gcs_address, started=started, dashboard_url=dashboard_url,
                   resources={k: float(v) for k, v in ray.cluster_resources().items()})

