"""Choosing TCP ports for the servers fleetwm starts (a local Ray's Serve, a redis-server, test servers).

A port the kernel hands out (``bind(0)``, an outgoing connection) can be taken by one of a local Ray's many
processes, which pick theirs from the same range (above the kernel's next ephemeral port), between the choice
and the bind by the server it was chosen for. ``free_ports`` chooses where nothing takes a port on its own:
above Ray's worker ports and below the kernel's ephemeral range.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket

logger = logging.getLogger(__name__)

RAY_WORKER_PORTS = range(10002, 20000)
"""Ray's default ``min_worker_port``..``max_worker_port``: its worker processes' gRPC servers take these."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (``0.0.0.0``: free on every interface)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` different ports free right now on ``host``, above Ray's worker ports and below the kernel's
    ephemeral range (the kernel's choice where that range leaves no room)."""
    low, high = RAY_WORKER_PORTS.stop, ephemeral_ports().start
    candidates = random.SystemRandom().sample(range(low, high), high - low) if high > low else []
    chosen: list[int] = []
    for port in candidates:
        if len(chosen) == count:
            break
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, port))
            chosen.append(port)
    if len(chosen) < count:  # no room outside the ephemeral range: let the kernel choose
        logger.warning("no %d free ports between %d and %d (the kernel's ephemeral range starts there): taking "
                       "the kernel's, which a Ray process may take first", count, low, high)
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
            for s in socks:
                s.bind((host, 0))
            return [int(s.getsockname()[1]) for s in socks]
    return chosen


def ephemeral_ports() -> range:
    """The ports the kernel hands out for ``bind(0)`` and outgoing connections (Linux's default where
    the setting cannot be read)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
        return range(low, high + 1)
    except (OSError, ValueError):
        return range(32768, 61000)
