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

Several local Rays on one machine (two `wm serve`, a test run beside them) do not collide: each
picks free ports for its GCS, raylets, object managers and metrics export, and named actors live
in one Ray instance. The one fixed port is the dashboard agent's HTTP port (52365): a second Ray's
agent runs without it, which only the dashboard and the job API use, neither started here.
Serve's own fixed ports are ``serving.deploy``'s concern (``LOCAL_PORTS``).
The ports fleetwm chooses itself (Serve's, a redis-server's, the tests') lie below the ports the kernel
and Ray hand out (``free_ports``), so no Ray process takes one before its server binds it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from dataclasses import dataclass
from typing import Any

import ray

from actors.common import NAMESPACE
from actors.ports import free_port

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


def check_port_free(host: str, port: int) -> None:
    """Raise a one-line error when something listens on ``host:port`` already, naming it where this
    user may see it (an HAProxy a stopped Ray Serve left behind is said to be one, with its pid).

    Raises:
        ValueError: the port is in use, or ``host`` is not an address of this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: connections of a server that just stopped (TIME_WAIT) do not count as in use.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise ValueError(f"cannot listen on port {port} on {host}: {err.strerror}") from None
    holders = "; ".join(_describe(pid) for pid in listening_pids(port))
    raise ValueError(f"port {port} on {host} is in use" + (f" by {holders}" if holders else ""))


def listening_pids(port: int) -> list[int]:
    """Processes of this user listening on TCP ``port`` (Linux ``/proc``; empty where it is not readable)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()  # sl, local 'ADDR:PORT' (hex), remote, state (0A: listening), ..., inode
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(f"socket:[{fields[9]}]")
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc") if inodes else []):
        with contextlib.suppress(OSError):  # another user's process, or one that just ended
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd")):
                pids.append(int(pid))
    return pids


def _describe(pid: int) -> str:
    comm, ppid = _proc_stat(pid)
    if comm != "haproxy":
        return f"{comm} (pid {pid})"
    # Ray Serve runs HAProxy as a child of its HAProxyManager actor; one whose parent is gone was
    # reparented (to init or a subreaper) and keeps the port until it is stopped.
    parent, _ = _proc_stat(ppid)
    if parent.startswith("ray::"):
        return f"the HAProxy (pid {pid}) of a running Ray Serve (another `wm serve`?)"
    return f"an HAProxy (pid {pid}) left behind by a Ray Serve that is no longer running; stop it: kill {pid}"


def _proc_stat(pid: int) -> tuple[str, int]:
    """(command name, parent pid) of ``pid``; ('?', 0) when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return "?", 0
    # 'PID (COMM) STATE PPID ...': COMM may hold spaces and parentheses, so split at the last ')'.
    head, _, tail = stat.rpartition(")")
    return head.split("(", 1)[1], int(tail.split()[1])


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

