"""The fleet endpoint's HTTP front: the FastAPI app, its error bodies, the middleware a request meets first.

A request meets, in order: ``_CountClientErrors`` (counts 4xx answers), ``_RequireToken`` (every
route but ``/healthz`` needs the bearer token, checked before any body is read), ``_FastPlan``
(``POST /v1/plan`` answered by ``FleetIngress.plan_http`` straight from its bytes), then FastAPI's
routes, which ``serving.app.FleetIngress`` declares on ``api``. Every error answer is
``{"error": "<one line>"}`` (a 422 adds ``detail``).

Also here: the JSON helpers the routes answer with, and ``Refreshed``, a value kept fresh in the
background so that no request waits for the actor that has it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.bus import to_json
from serving.metrics import serving_metrics
from serving.schema import ErrorBody, public_body  # noqa: F401 (the routes answer with it)

if TYPE_CHECKING:
    from serving.app import FleetIngress

logger = logging.getLogger("ray.serve")
api = FastAPI(title="fleetwm fleet endpoint", version="1",
              description="Next actions for fleets of agents, planned through a learned world model. Every route "
                          "but /healthz needs `Authorization: Bearer <token>` when the server has a token.")

OPEN_PATHS = frozenset({"/healthz"})
"""Routes that need no bearer token: the health probe."""
ERRORS = {400: "The body could not be decoded.", 401: "Missing or wrong bearer token.",
          404: "No such route, or (POST /v1/explain) the plan_id or the agent's current state is not known.",
          409: "The request_id was superseded by a later one.", 415: "The body is not JSON.",
          422: "The body or path is invalid; `error` names the field.",
          503: "Planning failed, or the served model's spec could not be fetched; retry."}
"""The error answers of the API routes, as the OpenAPI schema documents them (``error_responses``)."""
JSON_TYPES = (b"", b"application/json")
"""Content types ``POST /v1/plan`` parses as JSON, besides any ``+json`` type (none given: JSON)."""


# -- error bodies: one line under "error" -------------------------------------------------
def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that may answer these error statuses."""
    return {status: {"model": ErrorBody, "description": ERRORS[status]} for status in statuses}


def _one_line(errors: list[dict[str, Any]]) -> str:
    """The first validation error as 'field.path: message' ('body' when the body itself is wrong)."""
    first, more = errors[0], (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
    loc = list(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return f"body: not valid JSON ({first.get('msg')})"
    parts = loc[1:] if loc[:1] in (["body"], ["path"], ["query"], ["header"]) else loc
    return f"{'.'.join(str(p) for p in parts) or 'body'}: {first.get('msg', 'invalid')}{more}"


def invalid_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """A 422 body: the one line, and every error's place, message and type."""
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
    return {"error": _one_line(errors), "detail": detail}


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    return JSONResponse(invalid_body(list(err.errors())), status_code=422)


@api.exception_handler(StarletteHTTPException)  # FastAPI's own, and Starlette's 400/404/405
async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    error = str(err.detail).replace("\n", " ")
    if err.status_code == 404 and error == "Not Found":
        error = f"no route {request.method} {request.url.path}"
    elif err.status_code == 405:
        allowed = (err.headers or {}).get("Allow", "none")
        error = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
    return JSONResponse({"error": error}, status_code=err.status_code, headers=err.headers)


@api.exception_handler(Exception)
async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    # A bug of ours, not the client's: logged with its traceback, answered as one JSON line.
    logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=err)
    message = " ".join(str(err).split())[:200]
    return JSONResponse({"error": f"internal error: {type(err).__name__}: {message}"}, status_code=500)


# -- the middleware a request meets first ------------------------------------------------
def _replica() -> FleetIngress:
    """This replica's ingress instance (as Serve's class-based routes find it)."""
    return serve.get_replica_context().servable_object


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


class _RequireToken:
    """Every route but ``OPEN_PATHS`` needs the bearer token, checked before anything reads the body.

    The one place that decides auth: the docs (``/openapi.json``, ``/docs``, ``/redoc``) and unknown
    routes need the token too, so nothing about the API is told to a caller without it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _route_path(scope) not in OPEN_PATHS \
                and not _replica().authorized(dict(scope["headers"])):
            await _send_json(send, 401, {"error": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                             [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


class _FastPlan:
    """``POST /v1/plan``, answered by ``FleetIngress.plan_http`` without FastAPI's per-request machinery.

    At fleet rates FastAPI's route (dependency solving, validating the parsed body, validating and
    encoding the response model) costs about a fifth of the ingress's CPU per request. ``plan_http``
    is the one place that validates and answers this route, errors included; FastAPI's route for it
    documents the API and delegates to the same method.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or _route_path(scope) != "/v1/plan":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away
            return
        status, payload = await _replica().plan_http(dict(scope["headers"]), body)
        await _send_json(send, status, payload)


def _route_path(scope: Scope) -> str:
    """The path the app's routes see: without the app's ``root_path`` (a Serve route prefix other than /)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (a plan request is small), or None when the client disconnected first."""
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


encode = to_json
"""``payload`` as JSON, a non-finite number (a diverging model's) as null."""


async def _send_json(send: Send, status: int, payload: dict[str, Any],
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = encode(payload)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


api.add_middleware(_FastPlan)
api.add_middleware(_RequireToken)
api.add_middleware(_CountClientErrors)  # added last, so it runs first: it counts the others' 4xx too


class Unavailable(RuntimeError):
    """A value the endpoint needs could not be fetched yet (its actor is down or restarting): a retryable 503."""


class Refreshed:
    """A value fetched by ``fetch`` and kept, so a hot path never waits for the actor that has it.

    ``get`` waits only for the very first value; ``peek`` never waits (None until there is one).
    Either starts one background refresh once the value is older than ``max_age_s``: one at a time,
    never one per request, so a burst does not flood the actor. A failed refresh keeps the last value.
    """

    def __init__(self, fetch: Callable[[], Awaitable[Any]], max_age_s: float, what: str) -> None:
        self.fetch, self.max_age_s, self.what = fetch, max_age_s, what
        self.value: Any = None
        self.error: str | None = None
        """Why the last fetch failed (None when it did not)."""
        self._at = float("-inf")
        self._first = asyncio.Lock()
        self._refresh: asyncio.Task[None] | None = None

    async def get(self) -> Any:
        """The value; the first call waits for it.

        Raises:
            Unavailable: there is no value yet and the fetch failed; the message names ``what`` and why.
        """
        if self.value is None:
            await asyncio.shield(self._refresh or self._start())  # one fetch, shared by everyone waiting
            if self.value is None:
                raise Unavailable(f"{self.what} not available: {self.error}")
        return self.peek()

    def peek(self) -> Any:
        """The value as it is (None before the first), starting a refresh when it is stale."""
        if self._refresh is None and time.monotonic() - self._at > self.max_age_s:
            self._start()
        return self.value

    def _start(self) -> asyncio.Task[None]:
        self._refresh = asyncio.get_running_loop().create_task(self._refreshed())
        return self._refresh

    async def _refreshed(self) -> None:
        try:
            self.value, self.error = await self.fetch(), None
        except Exception as err:  # keep the last known value; the next look tries again
            self.error = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
            logger.warning("could not refresh %s: %s", self.what, self.error)
        finally:
            self._at, self._refresh = time.monotonic(), None
