"""Streaming control: the Serve deployment whose replicas read plan requests from the fleet bus.

``StreamConsumer`` is built into the app by ``serving.app.build`` when ``AppConfig.redis_url`` is set
(``consumer_replicas`` replicas). Its replicas form one consumer group (``BusNames.plan_group``), each the
consumer named by its replica id, running ``serving.consumer_loop.ConsumerLoop`` from its start to its
graceful stop (Serve's ``__del__``): in-flight batches are answered and acknowledged before it goes, and
a replica that dies instead leaves its pending requests to be claimed by another after ``claim_idle_ms``.

One engine, two transports: each replica has its own ``PlanEngine`` on the same agent-state shards,
planner deployment, shadow, metrics and telemetry sink (``serving.sinks.start_telemetry``) as the HTTP
ingress, and checks requests against the served model with the HTTP path's ``check_request``.

Records stay consistent across the replicas and the ingress: each engine has a ``RecordCache`` that it
uses only while its writer lease in the shards says it is the only writer (one consumer replica, the
ingress idle); with several writers the caches are off and every batch reads the shards. A writer that
found itself alone learns of a new one only at its next renewal (``LEASE_RENEW_S``), so a replica joins
first (``PlanEngine.join``): it holds a lease from its start and reads the bus only once every other writer
has renewed since, and keeps it (a wait to join again, with requests read, would let another replica claim and
answer them meanwhile). The HTTP ingress joins the same way at its start, but leaves after ``IDLE_LEAVE_S``
without a batch (and joins again at its next), so an idle ingress leaves a lone consumer its cache.

Health: a replica fails ``check_health`` (and Serve replaces it) only when its loop has ended, which it
does only through a bug. Redis being unreachable is not a reason to replace it: a new replica would
reach Redis no better, and redis-py reconnects on its own; the loop retries, ``stats().unreachable_s``
counts, and the ingress's ``/healthz`` answers 'degraded' with ``bus_error``.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable

from ray import serve
from ray.serve.handle import DeploymentHandle

from actors.records import RecordCache
from actors.state_store import start_state_shards
from serving.ab import live_ab
from serving.bus import BusNames
from serving.config import AppConfig
from serving.consumer_loop import BusStats, ConsumerLoop, LoopSettings
from serving.engine import PlanEngine
from serving.front import Refreshed
from serving.metrics import serving_metrics
from serving.schema import PlanRequest
from serving.served_checks import check_request
from serving.sinks import start_telemetry

logger = logging.getLogger("ray.serve")

STOP_S = 10.0
"""How long a stopping replica waits for its batches in flight (Serve's graceful shutdown allows 20 s)."""


class StreamConsumer:
    """One consumer of the plan group per replica; ``stats`` for ``GET /v1/models``."""

    async def __init__(self, planner: DeploymentHandle, shadow: DeploymentHandle | None,
                       config: dict[str, Any], candidate: DeploymentHandle | None = None) -> None:
        """``planner``, ``shadow`` and the A/B ``candidate`` (None: no A/B) as the ingress gets them;
        ``config`` an ``AppConfig`` as a dict, with ``redis_url`` set."""
        self._stopped = False
        self.cfg = cfg = AppConfig.from_dict(config)
        if cfg.redis_url is None:
            raise ValueError("StreamConsumer needs AppConfig.redis_url (the fleet bus), got None")
        self.planner = planner
        store = start_state_shards(cfg.state, detached=True)
        sink, _ = start_telemetry(cfg)
        metrics = serving_metrics()
        # used only while this engine is the one writer (see the module docstring)
        live = live_ab(candidate, cfg.registry_uri, cfg.poll_s, "consumer", metrics)
        self.engine = PlanEngine(planner, store, sink, shadow, metrics, cfg.default_deadline_ms,
                                 RecordCache(cfg.state.ttl_s), drift=cfg.drift, ab=live, leave_idle_s=None)
        self.engine.max_batch = int(cfg.batching["max_batch_size"])  # as deployed: user_config reaches the ingress
        self._spec = Refreshed(self._fetch_spec, 2.0, "model spec")  # follows version switches
        consumer = serve.get_replica_context().replica_tag
        settings = LoopSettings(read_count=cfg.read_count, claim_idle_ms=cfg.claim_idle_ms)
        self.loop = ConsumerLoop(cfg.redis_url, BusNames(cfg.bus_prefix), consumer, self.engine, self._check,
                                 settings, metrics)
        await self.engine.join()  # see the module docstring
        self.loop.start()
        logger.info("stream consumer %s reading %s", consumer, BusNames(cfg.bus_prefix).requests)

    async def stats(self) -> BusStats:
        """This replica's counts and its group's state (lag and pending are the group's, whichever replica
        answers)."""
        return self.loop.stats()

    async def check_health(self) -> None:
        problem = self.loop.problem()
        if problem is not None:
            raise RuntimeError(problem)

    def __del__(self) -> Awaitable[None] | None:
        # Serve's graceful stop awaits what this returns: answer and acknowledge what was read, then go. A
        # plain method, so the garbage collector's later call makes no coroutine that nobody awaits.
        if getattr(self, "loop", None) is None or self._stopped:
            return None
        self._stopped = True
        return self._stop()

    async def _stop(self) -> None:
        await self.loop.stop(STOP_S)

    async def _check(self, req: PlanRequest) -> str | None:
        return check_request(req, await self._spec.get())

    async def _fetch_spec(self) -> dict[str, Any]:
        return await self.planner.info.remote()
