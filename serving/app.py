"""The fleet endpoint as a Ray Serve application: an HTTP ingress composed with a planner deployment.

- ``FleetIngress`` (FastAPI, CPU) validates requests, merges concurrent ones with
  ``@serve.batch`` and runs each batch through ``PlanEngine``: one call to the agent-state
  shards, one to the planner deployment and one to the telemetry logger per batch.
- ``PlannerServer`` hosts an ``EnsembleWorker`` (the Ray-free ``FleetPlanner``) on a GPU when the cluster has one.
  Serving a registry stage ('production', 'shadow'), it follows the registry: a promotion
  switches the version between two batches, without dropping a request.
- An optional shadow ``PlannerServer`` plans the same batches in the background; its actions
  and prediction error are compared with production's, never returned.

Build it with ``build(args)`` (``serve run serving.app:build model=...``, or the Serve config
``serving/serve_config.yaml`` for ``serve deploy``), or start it with ``deploy(...)``.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at run time.
import asyncio
import hmac
import json
import logging
import time
from typing import Any

import numpy as np
import ray
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.common import NAMESPACE, gpus_per_worker
from actors.ensemble import EnsembleWorker
from actors.state import start_state_shards
from actors.telemetry import TelemetryLogger
from planners.service import ServiceConfig
from serving.config import BATCHING, AppConfig
from serving.engine import PlanEngine, RecordCache
from serving.metrics import serving_metrics
from serving.schema import BatchRequest, BatchResponse, PlanRequest, PlanResponse, ResetResponse
from worldmodel.data.writer import AGENT_ID_PATTERN
from worldmodel.registry import STAGES, ModelRegistry

logger = logging.getLogger("ray.serve")
api = FastAPI(title="fleetwm fleet endpoint", version="1",
              description="Next actions for fleets of agents, planned through a learned world model.")


def _one_line(errors: list[dict[str, Any]]) -> str:
    """The first validation error as 'field.path: message' (the body itself when it is not valid JSON)."""
    first, more = errors[0], (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
    loc = list(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return f"body: not valid JSON ({first.get('msg')} at character {loc[-1]})"
    parts = loc[1:] if loc[:1] == ["body"] else loc
    return f"{'.'.join(str(p) for p in parts) or 'body'}: {first.get('msg', 'invalid')}{more}"


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in err.errors()]
    return JSONResponse({"error": _one_line(errors), "detail": errors}, status_code=422)


@api.exception_handler(Exception)
async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    # A bug of ours, not the client's: logged with its traceback, answered as one JSON line.
    logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=err)
    return JSONResponse({"error": f"internal error: {type(err).__name__}: {str(err)[:200]}"}, status_code=500)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)


class _CountClientErrors:
    """Counts every 4xx the app answers by status (its own, FastAPI's validation 422s, unknown routes).

    A 5xx is not counted: a 503 asks the client to retry, it is not the client's error.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                serving_metrics().bad_requests.inc(tags={"status": str(message["status"])})
            await send(message)

        await self.app(scope, receive, counted if scope["type"] == "http" else send)


class _FastPlan:
    """``POST /v1/plan`` for well-formed requests, without FastAPI's per-request machinery.

    At fleet rates FastAPI's route (dependency solving, validating the parsed body, validating
    and encoding the response model) costs about a fifth of the ingress's CPU per request. Here a
    request is validated by the same ``PlanRequest``, straight from its JSON bytes, and answered
    by ``FleetIngress.plan_fast``. Anything else (malformed or invalid bodies, a missing or wrong
    token, a failed model check) goes on to FastAPI's route with its body, so every error answer
    comes from the one place that writes them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._ingress: "FleetIngress | None" = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or _route_path(scope) != "/v1/plan":
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:  # the whole body: a request is small
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if self._ingress is None:  # the replica's instance, as Serve's class-based routes find it
            self._ingress = serve.get_replica_context().servable_object
        try:
            answer = await self._ingress.plan_fast(dict(scope["headers"]), body)
        except HTTPException as err:  # planning failed: the 503 FastAPI's route would answer
            await _send_json(send, err.status_code, {"error": str(err.detail)})
            return
        if answer is None:
            await self.app(scope, _replay(body, receive), send)
            return
        await _send_json(send, 200, answer)


def _route_path(scope: Scope) -> str:
    """The path the app's routes see: without the app's ``root_path`` (a Serve route prefix other than /)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands on a body already read, then whatever the connection says next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    """``payload`` as FastAPI's route would answer it: None fields left out, non-finite numbers as null."""
    payload = {k: v for k, v in payload.items() if v is not None}
    try:
        data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:  # a NaN or infinity in an answer (a diverging model): null, as the route's response model writes
        data = PlanResponse.model_validate(payload).model_dump_json(exclude_none=True).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


api.add_middleware(_CountClientErrors)
api.add_middleware(_FastPlan)  # added last, so it runs first


class PlannerServer:
    """The planner deployment: an ``EnsembleWorker`` whose version moves with the registry stage it follows."""

    def __init__(self, model: str, registry_uri: str | None, service: dict[str, Any], poll_s: float) -> None:
        self.model, self.registry_uri, self.poll_s = model, registry_uri, poll_s
        self.worker = EnsembleWorker(model, registry_uri, ServiceConfig.from_dict(service))
        self.following = bool(registry_uri) and model in STAGES
        self._poller: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def plan(self, obs: np.ndarray, warm: np.ndarray | None, objectives: list[str],
                   zones: np.ndarray | None, budget_ms: float | None,
                   hidden: np.ndarray | None = None) -> dict[str, Any]:
        self._follow()
        async with self._lock:  # one batch at a time: planning uses every core it is given
            return await asyncio.to_thread(self.worker.plan, obs, warm, objectives, zones, budget_ms, hidden)

    async def score(self, obs: np.ndarray, actions: np.ndarray, next_obs: np.ndarray) -> dict[str, Any]:
        return await asyncio.to_thread(self.worker.score, obs, actions, next_obs)

    async def info(self) -> dict[str, Any]:
        self._follow()
        return self.worker.service.describe() | {"follows": self.model if self.following else None}

    def _follow(self) -> None:
        if self.following and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        registry = await asyncio.to_thread(ModelRegistry, self.registry_uri)  # type: ignore[arg-type]
        last_problem = None
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                holder = await asyncio.to_thread(registry.holder, self.model)  # a read, maybe remote: off the loop
                if holder is None:  # e.g. the shadow was just promoted: keep the version we have
                    problem = f"stage {self.model!r} is empty in {self.registry_uri}; still serving " \
                              f"{self.worker.version()}"
                elif holder.version != self.worker.version():
                    await asyncio.to_thread(self.worker.switch, holder.version)  # batches in flight keep the old one
                    logger.info("now serving %s %s", self.model, holder.version)
                    problem = None
                else:
                    problem = None
            except Exception as err:  # keep serving the current version; say why the switch failed
                problem = f"could not follow {self.model} in {self.registry_uri}: {err}"
            if problem is not None and problem != last_problem:  # said once, not every poll
                logger.warning(problem)
            last_problem = problem


@serve.ingress(api)
class FleetIngress:
    """HTTP front door: validation, auth, batching; the batch path itself is ``PlanEngine``."""

    def __init__(self, planner: DeploymentHandle, shadow: DeploymentHandle | None, config: dict[str, Any]) -> None:
        self.cfg = AppConfig.from_dict(config)
        self.planner, self.shadow = planner, shadow
        token = self.cfg.bearer_token  # read once: the environment is the replica's, fixed at its start
        self._expected_auth = f"Bearer {token}".encode() if token is not None else None
        store = start_state_shards(self.cfg.state, detached=True)
        telemetry = None
        if self.cfg.log_uri:
            telemetry = ray.remote(TelemetryLogger).options(
                name=self.cfg.telemetry_name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
                num_cpus=0, max_restarts=-1, max_task_retries=-1).remote(self.cfg.log_uri)
        self.metrics = serving_metrics()
        # One ingress replica writes every agent's records, so it may keep its own copy of them. (A Serve
        # config that overrides the replica count bypasses this check; see RecordCache.)
        scaling = self.cfg.ingress_autoscaling
        cache = RecordCache(self.cfg.state.ttl_s) if isinstance(scaling, dict) and scaling.get("max_replicas") == 1 \
            else None
        self.engine = PlanEngine(planner, store, telemetry, shadow, self.metrics, self.cfg.default_deadline_ms, cache)
        self.batching: dict[str, Any] = {}
        self._spec: dict[str, Any] | None = None
        self._spec_at = 0.0
        self._spec_lock = asyncio.Lock()
        self._refresh: asyncio.Task[None] | None = None

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
    async def _batched(self, items: list[tuple[PlanRequest, float]]) -> list[dict[str, Any]]:
        return await self.engine.submit([r for r, _ in items], [t for _, t in items])

    # -- routes ---------------------------------------------------------------------------
    @api.post("/v1/plan", response_model=PlanResponse, response_model_exclude_none=True)
    async def plan(self, body: PlanRequest, authorization: str | None = Header(default=None)) -> dict[str, Any]:
        start = time.monotonic()
        self._authorize(authorization)
        await self._check(body, "")
        answer = await self._answer(body, start)
        self.metrics.latency.observe(time.monotonic() - start, tags={"route": "plan"})
        return answer

    async def plan_fast(self, headers: dict[bytes, bytes], body: bytes) -> dict[str, Any] | None:
        """``POST /v1/plan`` from raw headers and body (``_FastPlan``): the answer, or None to leave the
        request to the FastAPI route (which then answers with the error)."""
        start = time.monotonic()
        if self._expected_auth is not None:
            auth = headers.get(b"authorization")
            if auth is None or not hmac.compare_digest(auth, self._expected_auth):
                return None
        if headers.get(b"content-type", b"").split(b";")[0].strip().lower() != b"application/json":
            return None  # FastAPI's route decides what other types mean
        try:
            req = PlanRequest.model_validate_json(body)
            await self._check(req, "")
        except (ValidationError, HTTPException):
            return None
        answer = await self._answer(req, start)
        self.metrics.latency.observe(time.monotonic() - start, tags={"route": "plan"})
        return answer

    @api.post("/v1/plan/batch", response_model=BatchResponse, response_model_exclude_none=True)
    async def plan_batch(self, body: BatchRequest, authorization: str | None = Header(default=None)) -> dict:
        start = time.monotonic()
        self._authorize(authorization)
        for i, req in enumerate(body.requests):
            await self._check(req, f"requests.{i}.")
        answers = await asyncio.gather(*(self._answer(r, start) for r in body.requests))
        self.metrics.latency.observe(time.monotonic() - start, tags={"route": "batch"})
        return {"responses": answers}

    @api.post("/v1/agents/{agent_id}/reset", response_model=ResetResponse)
    async def reset(self, agent_id: str, authorization: str | None = Header(default=None)) -> dict[str, Any]:
        self._authorize(authorization)
        if not AGENT_ID_PATTERN.match(agent_id):
            raise HTTPException(422, f"agent_id: {agent_id!r} is not a valid agent id (letters, digits, . _ -)")
        return {"agent_id": agent_id, "reset": await self.engine.reset([agent_id]) > 0}

    @api.get("/v1/models")
    async def models(self, authorization: str | None = Header(default=None)) -> dict[str, Any]:
        self._authorize(authorization)
        production = await self.planner.info.remote()
        shadow = await self.shadow.info.remote() if self.shadow is not None else None
        out = {"production": production, "shadow": shadow,
               "comparison": self.engine.shadow_stats.summary() if shadow else None,
               "batching": self.engine.stats() | self.batching}
        if self.cfg.registry_uri:
            versions = await asyncio.to_thread(lambda: ModelRegistry(self.cfg.registry_uri).versions())
            out["registry"] = [{"version": v.version, "stage": v.stage} for v in versions]
        return out

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        spec = await self._model_spec()
        return {"status": "ok", "model_version": spec["model_version"]}

    # -- helpers --------------------------------------------------------------------------
    async def _answer(self, body: PlanRequest, start: float) -> dict[str, Any]:
        try:
            return await self._batched((body, start))
        except Exception as err:  # planning failed: a retryable 503 naming the cause, never a bare 500
            logger.exception("plan batch failed")
            raise HTTPException(503, f"planning failed, retry: {type(err).__name__}: {str(err)[:200]}") from None

    def _authorize(self, authorization: str | None) -> None:
        if self._expected_auth is None:
            return
        if authorization is None or not hmac.compare_digest(authorization.encode(), self._expected_auth):
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})

    async def _model_spec(self) -> dict[str, Any]:
        """The served model's spec, refreshed in the background (follows version switches).

        Only the very first request waits for it; one refresh at a time, never one per request,
        so a burst does not flood the planner deployment with info calls queued behind batches.
        """
        if self._spec is None:
            async with self._spec_lock:
                if self._spec is None:
                    self._spec, self._spec_at = await self.planner.info.remote(), time.monotonic()
        elif self._refresh is None and time.monotonic() - self._spec_at > 2.0:
            self._refresh = asyncio.get_running_loop().create_task(self._refresh_spec())
        return self._spec

    async def _refresh_spec(self) -> None:
        try:
            self._spec = await self.planner.info.remote()
        except Exception as err:  # keep the last known spec; the next request tries again
            logger.warning("could not refresh the served model's spec: %s", err)
        finally:
            self._spec_at, self._refresh = time.monotonic(), None

    async def _check(self, req: PlanRequest, prefix: str) -> None:
        """What depends on the served model: observation length, objective and zones."""
        spec = await self._model_spec()
        if len(req.observation) != spec["obs_dim"]:
            raise HTTPException(422, f"{prefix}observation: has {len(req.observation)} values, model "
                                     f"{spec['model_version']} ({spec['env_id']}) expects {spec['obs_dim']}")
        if req.objective is not None:
            if req.objective.name not in spec["objectives"]:
                raise HTTPException(422, f"{prefix}objective.name: {req.objective.name!r} is not served for "
                                         f"{spec['env_id']}; choose one of {spec['objectives']}")
            if req.objective.no_fly_zones and not spec["zones"]:
                raise HTTPException(422, f"{prefix}objective.no_fly_zones: {spec['env_id']} has no positions to "
                                         "keep out of zones")


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
    ingress = serve.deployment(FleetIngress, name="Ingress").options(
        ray_actor_options={"num_cpus": cfg.ingress_cpus}, max_ongoing_requests=cfg.max_ongoing_requests,
        autoscaling_config=cfg.ingress_autoscaling, user_config=cfg.batching, **logs)
    # Batching travels only as user_config: changing it reconfigures the replicas in place.
    return ingress.bind(planner, shadow, {k: v for k, v in cfg.to_dict().items() if k != "batching"})
