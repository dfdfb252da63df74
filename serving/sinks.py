"""Where the engine sends the transitions that served requests close: the telemetry sinks.

- ``ActorSink``: the ``TelemetryLogger`` actor (``actors.telemetry``), the app without a fleet bus. Rows it
  holds unwritten are lost if it dies.
- ``StreamSink``: the fleet bus's telemetry stream (``actors.streams``), read by a ``StreamLogger``
  (``actors.stream_logger``): a transition is in Redis (AOF) before the call returns, so a logger crash
  loses none of them.

``start_telemetry`` picks one from the app's settings and starts the logger actor the app reports on.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import ray
import redis.asyncio as aioredis
from ray.actor import ActorHandle

from actors.common import NAMESPACE
from actors.stream_logger import StreamLogger
from actors.streams import FIELD, BusNames, encode_transitions
from actors.telemetry import TelemetryLogger
from serving.config import AppConfig
from worldmodel.data import Transitions

__all__ = ["ActorSink", "StreamSink", "TelemetrySink", "start_telemetry"]


class TelemetrySink(Protocol):
    """Takes the transitions of one engine cycle."""

    async def log(self, transitions: Transitions) -> None:
        """Send B transitions; returns once they are accepted, raises when they may not have been."""


class ActorSink:
    """Transitions to the ``TelemetryLogger`` actor (its ``log`` call)."""

    def __init__(self, handle: ActorHandle) -> None:
        self.handle = handle

    async def log(self, transitions: Transitions) -> None:
        await self.handle.log.remote(transitions)


class StreamSink:
    """Transitions appended to a telemetry stream, one entry each, in one pipeline (one round trip) per call.

    Producers never trim the stream (the logger's group does, below what it acknowledged). A Redis error
    is raised to the caller: which of the entries were added is then unknown, and the caller sends them
    again (the logs keep each (agent_id, eps_id, t) once).
    """

    def __init__(self, redis_url: str, stream: str, timeout_s: float = 5.0) -> None:
        """
        Args:
            redis_url: the fleet bus (``redis://host:port/db``).
            stream: the telemetry stream (``BusNames.telemetry``).
            timeout_s: how long a call waits for Redis before it fails.
        """
        self.redis_url, self.stream, self.timeout_s = redis_url, stream, timeout_s
        self._client: aioredis.Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def log(self, transitions: Transitions) -> None:
        if len(transitions) == 0:
            return
        pipe = self._connection().pipeline(transaction=False)
        for payload in encode_transitions(transitions):
            pipe.xadd(self.stream, {FIELD: payload})
        await pipe.execute()

    async def close(self) -> None:
        """Close the connection (a later ``log`` opens another)."""
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()

    def _connection(self) -> aioredis.Redis:
        """The client of the running event loop, created on first use there (a client is bound to its loop)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = aioredis.Redis.from_url(self.redis_url, socket_timeout=self.timeout_s,
                                                   socket_connect_timeout=self.timeout_s)
            self._loop = loop
        return self._client


def start_telemetry(cfg: AppConfig) -> tuple[TelemetrySink | None, ActorHandle | None]:
    """The engine's telemetry sink and the logger actor the app reports on (``stats``, ``flush``).

    No ``log_uri``: (None, None), nothing is logged. ``log_uri`` without ``redis_url``: the
    ``TelemetryLogger`` actor and an ``ActorSink`` to it. ``log_uri`` with ``redis_url``: a ``StreamLogger``
    actor reading the bus's telemetry stream into ``log_uri``, and a ``StreamSink`` to that stream. Either
    actor is named ``cfg.telemetry_name`` (shared by the ingress replicas, found again by ``shutdown_app``),
    detached and restarted by Ray.
    """
    if not cfg.log_uri:
        return None, None
    options = {"name": cfg.telemetry_name, "namespace": NAMESPACE, "get_if_exists": True, "lifetime": "detached",
               "num_cpus": 0, "max_restarts": -1, "max_task_retries": -1}
    if cfg.redis_url is None:
        handle = ray.remote(TelemetryLogger).options(**options).remote(cfg.log_uri)
        return ActorSink(handle), handle
    bus = BusNames(cfg.bus_prefix)
    # max_concurrency: stats answers while a flush waits for the ingest thread
    handle = ray.remote(StreamLogger).options(**options, max_concurrency=4).remote(
        cfg.redis_url, cfg.log_uri, cfg.telemetry_name, cfg.bus_prefix)
    return StreamSink(cfg.redis_url, bus.telemetry), handle
