"""The fleet endpoint as a Ray Serve application: an HTTP ingress composed with a planner deployment.

- ``FleetIngress`` (FastAPI, CPU) validates requests, merges concurrent ones with
  ``@serve.batch`` and runs each batch through ``PlanEngine``: one call to the agent-state
  shards, one to the planner deployment and one to the telemetry sink per batch.
- With a fleet bus (``AppConfig.redis_url``), ``StreamConsumer`` (``serving.stream_consumer``) answers
  the plan requests agents add to Redis Streams through the same engine, and served transitions of both
  transports go through the bus's telemetry stream (``serving.sinks``).
- ``PlannerServer`` (``serving.planner_server``) hosts the planner on a GPU when the cluster has one
  and follows its registry stage.
- An optional shadow ``PlannerServer`` plans the same batches in the background; its actions
  and prediction error are compared with production's, never returned.
- An optional A/B candidate planner (``serving.ab_planner``, ``AppConfig.ab``) serves the registry's live A/B
  test's share of the agents; each engine plans both arms of a batch at once (``serving.ab``).

The FastAPI app ``api``, its error bodies and the middleware in front of these routes are in
``serving.front``.

Build it with ``build(args)`` (``serve run serving.app:build model=...``, or the Serve config
``serving/serve_config.yaml`` for ``serve deploy``), or start it with ``deploy(...)``.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at run time.
import asyncio
import hmac
import logging
import time
from typing import Annotated, Any

import ray
from fastapi import FastAPI, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from actors.common import gpus_per_worker
from actors.records import PlanAnswer, RecordCache, Rejected
from actors.state_store import start_state_shards
from actors.telemetry import LoggerStats
from serving.ab import live_ab
from serving.ab_planner import CandidatePlanner
from serving.config import BATCHING, AppConfig
from serving.consumer_loop import BusStats
from serving.engine import PlanEngine
from serving.explain import ExplainRequest, ExplainResponse, check_explain
from serving.front import JSON_TYPES, Refreshed, Unavailable, api, encode, error_responses, invalid_body
from serving.metrics import serving_metrics
from serving.planner_server import PlannerServer
from serving.schema import (AGENT_ID_DESCRIPTION, BatchRequest, BatchResponse, HealthResponse, PlanRequest,
                            PlanResponse, ResetResponse, public_body)
from serving.served_checks import check_request, served_openapi
from serving.sinks import start_telemetry
from serving.stream_consumer import StreamConsumer
from worldmodel.data.writer import AGENT_ID_PATTERN, check_writable
from worldmodel.registry import ModelRegistry

logger = logging.getLogger("ray.serve")
_BUS_STATS_S = 5.0
"""How long ``GET /v1/models`` waits for the stream consumer's stats."""


# `serve.ingress` freezes a copy of `api`, and with it this class, as the module stands here: what its
# methods use from this module must be defined above it.
@serve.ingress(api)
class FleetIngress:
    """HTTP front door: validation and batching; the batch path itself is ``PlanEngine``."""

    async def __init__(self, planner: DeploymentHandle, shadow: DeploymentHandle | None,
                       consumer: DeploymentHandle | None, config: dict[str, Any],
                       candidate: DeploymentHandle | None = None) -> None:
        """``consumer``: the ``StreamConsumer`` deployment (None without a fleet bus), bound here so that it is
        part of the app; the ingress reads its stats. ``candidate``: the A/B candidate planner (None: no A/B).
        The replica takes its writer lease before it serves, and gives it up while idle (``PlanEngine.join``)."""
        self._setup(planner, shadow, consumer, config, candidate)
        await self.engine.join()

    def _setup(self, planner: DeploymentHandle, shadow: DeploymentHandle | None,
               consumer: DeploymentHandle | None, config: dict[str, Any],
               candidate: DeploymentHandle | None = None) -> None:
        self.cfg = AppConfig.from_dict(config)
        if self.cfg.log_uri:  # a replica that could log nothing must not start, nor report itself healthy
            check_writable(self.cfg.log_uri)
        self.planner, self.shadow, self.consumer = planner, shadow, consumer
        token = self.cfg.bearer_token  # read once: the environment is the replica's, fixed at its start
        self._expected_auth = f"Bearer {token}".encode() if token is not None else None
        store = start_state_shards(self.cfg.state, detached=True)
        sink, self._logger = start_telemetry(self.cfg)
        self.metrics = serving_metrics()
        cache = RecordCache(self.cfg.state.ttl_s)  # the engine uses it only while its writer lease is the only one
        live = live_ab(candidate, self.cfg.registry_uri, self.cfg.poll_s, "ingress", self.metrics)
        self.engine = PlanEngine(planner, store, sink, shadow, self.metrics, self.cfg.default_deadline_ms, cache,
                                 drift=self.cfg.drift, ab=live)
        self.batching: dict[str, Any] = {}
        self._spec = Refreshed(self._fetch_spec, 2.0, "model spec")  # follows version switches
        self._telemetry = None if self._logger is None else Refreshed(self._fetch_telemetry, 2.0, "telemetry stats")
        self._bus = None if consumer is None else Refreshed(self._fetch_bus, 2.0, "stream consumer stats")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batching knobs, adjustable at run time through the deployment's ``user_config``.

        ``max_batch_size`` caps both a ``@serve.batch`` batch and a planner call (a cycle).
        """
        knobs = BATCHING | user_config
        size, wait = int(knobs["max_batch_size"]), float(knobs["batch_wait_timeout_s"])
        self._batched.set_max_batch_size(size)
        self._batched.set_batch_wait_timeout_s(wait)
        self.engine.max_batch = size
        self.batching = {"max_batch_size": size, "batch_wait_timeout_s": wait}

    # Several batches may be formed at once (max_concurrent_batches): they do not wait in line
    # here but join the engine's queue, whose cycles merge them into one planner call.
    @serve.batch(**BATCHING, max_concurrent_batches=64)
    async def _batched(self, items: list[tuple[PlanRequest, float]]) -> list[PlanAnswer | Rejected]:
        return await self.engine.submit([r for r, _ in items], [t for _, t in items])

    # -- the front door (called by the middleware) ------------------------------------------
    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        """No token is configured, or the request's Authorization header carries it (``_RequireToken``)."""
        if self._expected_auth is None:
            return True
        auth = headers.get(b"authorization")
        return auth is not None and hmac.compare_digest(auth, self._expected_auth)

    async def plan_http(self, headers: dict[bytes, bytes], body: bytes) -> tuple[int, dict[str, Any]]:
        """``POST /v1/plan`` from its raw headers and JSON body (the token already checked).

        Returns:
            the HTTP status and the JSON body: the answer (200), or ``{"error": ...}`` (415, 422, 409, 503).
        """
        start = time.monotonic()
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if kind not in JSON_TYPES and not kind.endswith(b"+json"):
            return 415, {"error": f"Content-Type: expected application/json, got {kind.decode('latin-1')!r}"}
        try:
            req = PlanRequest.model_validate_json(body)
        except ValidationError as err:
            return 422, invalid_body(err.errors())
        try:
            problem = await self._check(req, "")
        except Unavailable as err:
            return 503, {"error": str(err)}
        if problem is not None:
            return 422, {"error": problem}
        answer = await self._answer(req, start)
        if isinstance(answer, Rejected):
            return answer.status, answer.to_dict()
        self.metrics.latency.observe(time.monotonic() - start, tags={"route": "plan"})
        return 200, public_body(answer)

    # -- routes ---------------------------------------------------------------------------
    @api.post("/v1/plan", response_model=PlanResponse, responses=error_responses(401, 409, 415, 422, 503),
              summary="Next action for one agent", openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"$ref": "#/components/schemas/PlanRequest"}}}}})
    async def plan(self, request: Request) -> Response:
        # `_FastPlan` answers this route before it is reached, through the same `plan_http`.
        status, payload = await self.plan_http(dict(request.headers.raw), await request.body())
        return Response(encode(payload), status_code=status, media_type="application/json")

    @api.post("/v1/plan/batch", response_model=BatchResponse, responses=error_responses(400, 401, 409, 422, 503),
              summary="Next actions for several agents, in order")
    async def plan_batch(self, body: BatchRequest) -> Response:
        start = time.monotonic()
        for i, req in enumerate(body.requests):
            try:
                problem = await self._check(req, f"requests.{i}.")
            except Unavailable as err:
                raise HTTPException(503, str(err)) from err
            if problem is not None:
                raise HTTPException(422, problem)
        answers = await asyncio.gather(*(self._answer(r, start) for r in body.requests))
        # The whole batch fails with its first refused request; the others were planned, and a retry
        # with the same request ids gets their answers again (replayed).
        for i, answer in enumerate(answers):
            if isinstance(answer, Rejected):
                raise HTTPException(answer.status, f"requests.{i}: {answer.error}")
        self.metrics.latency.observe(time.monotonic() - start, tags={"route": "batch"})
        return Response(encode({"responses": [public_body(a) for a in answers]}), media_type="application/json")

    @api.post("/v1/explain", response_model=ExplainResponse, responses=error_responses(400, 401, 404, 422, 503),
              summary="Why an agent's action: the chosen plan and its counterfactuals, each predicted")
    async def explain(self, body: ExplainRequest) -> Response:
        """The chosen plan, the best alternatives the planner scored, the fallback's action and each proposal,
        each with its predicted trajectory, return, disagreement and constraint margins (``serving.explain``).

        For a served ``plan_id`` (kept 600 s, the agent's last 64), else for the agent's current state or a
        given observation. Over the fleet bus, a plan request's ``explain`` field asks for the same body in
        its reply (``explanation``).
        """
        try:
            problem = check_explain(body, await self._spec.get())
        except Unavailable as err:
            raise HTTPException(503, str(err)) from err
        if problem is not None:
            raise HTTPException(422, problem)
        try:
            answer = await self.engine.explain(body)
        except Exception as err:  # the planner deployment failed: retryable, named
            logger.exception("explain failed")
            raise HTTPException(503, f"explaining failed, retry: {type(err).__name__}: "
                                     f"{' '.join(str(err).split())[:200]}") from err
        if isinstance(answer, Rejected):
            raise HTTPException(answer.status, answer.error)
        return Response(encode(answer), media_type="application/json")

    @api.post("/v1/agents/{agent_id}/reset", response_model=ResetResponse, responses=error_responses(401, 422),
              summary="Forget an agent: its next request starts a new episode")
    async def reset(self, agent_id: Annotated[str, Path(pattern=AGENT_ID_PATTERN.pattern,
                                                         description=AGENT_ID_DESCRIPTION)]) -> dict[str, Any]:
        # The pattern is checked as the plan route's agent_id is (the whole string; no trailing newline).
        return {"agent_id": agent_id, "reset": await self.engine.reset([agent_id]) > 0}

    @api.get("/v1/models", responses=error_responses(401),
             summary="The served, shadow and A/B candidate versions, this replica's live A/B totals, batching, the "
                     "fleet bus (its consumer's stats) and the registry")
    async def models(self) -> dict[str, Any]:
        production = await self.planner.info.remote()
        shadow = await self.shadow.info.remote() if self.shadow is not None else None
        live = self.engine.ab
        out = {"production": production, "shadow": shadow,
               "comparison": self.engine.shadow_stats.summary() if shadow else None,
               "candidate": await live.candidate.info.remote() if live is not None else None,
               "ab": live.status() if live is not None else None,
               "batching": self.engine.stats() | self.batching, "bus": await self._bus_stats()}
        if self.cfg.registry_uri:
            versions = await asyncio.to_thread(lambda: ModelRegistry(self.cfg.registry_uri).versions())
            out["registry"] = [{"version": v.version, "stage": v.stage} for v in versions]
        return out

    @api.get("/healthz", response_model=HealthResponse, response_model_exclude_none=True,
             responses=error_responses(503),
             summary="Health probe (no token): 'degraded' while telemetry cannot be written or its logger "
                     "reached, or the fleet bus cannot be read; 503 'unavailable' while the served model's spec "
                     "cannot be fetched")
    async def healthz(self) -> Any:
        try:
            spec = await self._spec.get()
        except Unavailable as err:
            return JSONResponse({"error": str(err), "status": "unavailable"}, status_code=503)
        error, bus_error = self._telemetry_problem(), self._bus_problem()
        return {"status": "degraded" if error or bus_error else "ok", "model_version": spec["model_version"],
                "telemetry_error": error, "bus_error": bus_error}

    # -- helpers --------------------------------------------------------------------------
    async def _answer(self, req: PlanRequest, start: float) -> PlanAnswer | Rejected:
        """The engine's answer; a failed planning is a retryable 503 naming the cause, never a bare 500."""
        if self._telemetry is not None:
            self._telemetry.peek()  # keeps the logger's stats (and their gauges) fresh; never waits
        try:
            answer = await self._batched((req, start))
        except Exception as err:
            logger.exception("plan batch failed")
            return Rejected(503, f"planning failed, retry: {type(err).__name__}: {' '.join(str(err).split())[:200]}")
        return await self.engine.explained(req, answer)  # only this request waits for its explanation

    async def _check(self, req: PlanRequest, prefix: str) -> str | None:
        """What depends on the served model (``check_request``, the stream consumer's check too)."""
        return check_request(req, await self._spec.get(), prefix)

    def _telemetry_problem(self) -> str | None:
        """Why served transitions are not being logged, from cached stats (no actor call): the logger
        cannot be reached, or its writes fail. None when they are logged, or telemetry is off."""
        if self._telemetry is None:
            return None
        stats = self._telemetry.peek()
        if self._telemetry.error is not None:
            return f"telemetry logger unreachable: {self._telemetry.error}"
        return stats.last_error if stats is not None else None

    def _bus_problem(self) -> str | None:
        """Why the stream consumer cannot read the fleet bus, from cached stats (None: it can, or no bus)."""
        if self._bus is None:
            return None
        stats: BusStats | None = self._bus.peek()
        if self._bus.error is not None:
            return f"stream consumer unreachable: {self._bus.error}"
        if stats is not None and stats.unreachable_s is not None:
            return f"Redis unreachable for {stats.unreachable_s:.0f} s: {stats.last_error}"
        return None

    async def _bus_stats(self) -> dict[str, Any] | None:
        """``/v1/models``' ``bus``: a consumer replica's ``BusStats``, ``{"error": ...}`` when none answers in
        time, None without a fleet bus."""
        if self.consumer is None:
            return None
        try:
            return (await asyncio.wait_for(self._fetch_bus(), _BUS_STATS_S)).to_dict()
        except Exception as err:  # the route still answers: the rest is the ingress's own
            return {"error": f"stream consumer unreachable: {type(err).__name__}: {' '.join(str(err).split())[:200]}"}

    async def _fetch_bus(self) -> BusStats:
        """One consumer replica's stats (its counts; the group's lag and pending), whichever replica answers."""
        return await self.consumer.stats.remote()

    async def _fetch_telemetry(self) -> LoggerStats:
        """The logger's stats, exported as gauges; a logger that cannot be reached is exported as failing."""
        try:
            stats = await self._logger.stats.remote()
        except Exception:
            self.metrics.report_telemetry(None)
            raise  # ``Refreshed`` keeps the error: health reports it
        self.metrics.report_telemetry(stats)
        return stats

    async def _fetch_spec(self) -> dict[str, Any]:
        """The served model's spec; the app's OpenAPI schema then states its observation and action sizes."""
        spec = await self.planner.info.remote()
        app: FastAPI = self.app  # the replica's own copy of ``api`` (Serve's ASGIAppReplicaWrapper)
        served = served_openapi(FastAPI.openapi(app), spec["obs_dim"], spec["act_dim"], spec.get("modes"),
                                spec.get("sites", False), spec.get("reward_models"),
                                camera=spec.get("image_shape") is not None)
        app.openapi = lambda: served  # type: ignore[method-assign]
        return spec


def build(args: dict[str, Any]) -> serve.Application:
    """The application from its arguments (an ``AppConfig`` as a dict): ``serve run``/``serve deploy`` entry."""
    cfg = AppConfig.from_dict(args)
    gpus = gpus_per_worker() if ray.is_initialized() else 0.0
    # A deployment's logging_config replaces the application's, so set one only when asked to.
    logs = {} if cfg.access_log is None else {"logging_config": {"enable_access_log": cfg.access_log}}
    planner_options = {"ray_actor_options": {"num_cpus": cfg.planner_cpus, "num_gpus": gpus},
                       "autoscaling_config": cfg.planner_autoscaling, "max_ongoing_requests": 4,
                       "health_check_period_s": 5, **logs}
    planner_cls = serve.deployment(PlannerServer, name="Planner")
    planner = planner_cls.options(**planner_options).bind(cfg.model, cfg.registry_uri, cfg.service, cfg.poll_s)
    shadow = None
    if cfg.shadow:
        shadow = serve.deployment(PlannerServer, name="ShadowPlanner").options(**planner_options).bind(
            cfg.shadow, cfg.registry_uri, cfg.service, cfg.poll_s)
    candidate = None
    if cfg.ab:  # follows the registry's A/B test; idle (no agents sent) while none runs
        candidate = serve.deployment(CandidatePlanner, name="CandidatePlanner").options(**planner_options).bind(
            cfg.registry_uri, cfg.service, cfg.poll_s)
    consumer = None
    if cfg.redis_url:  # streaming control: its replicas form the bus's consumer group
        consumer = serve.deployment(StreamConsumer, name="StreamConsumer").options(
            num_replicas=cfg.consumer_replicas, ray_actor_options={"num_cpus": cfg.ingress_cpus}, **logs).bind(
            planner, shadow, cfg.to_dict(), candidate)
    ingress = serve.deployment(FleetIngress, name="Ingress").options(
        ray_actor_options={"num_cpus": cfg.ingress_cpus}, max_ongoing_requests=cfg.max_ongoing_requests,
        autoscaling_config=cfg.ingress_autoscaling, user_config=cfg.batching, **logs)
    # Batching travels only as user_config: changing it reconfigures the replicas in place.
    return ingress.bind(planner, shadow, consumer, {k: v for k, v in cfg.to_dict().items() if k != "batching"},
                        candidate)
