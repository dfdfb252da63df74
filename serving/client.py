"""Python clients of the fleet endpoint's HTTP API v1: ``FleetClient`` (blocking) and ``AsyncFleetClient``.

Both send the same bodies and handle failures the same way:

- every plan request carries a ``request_id``, the step index ``t`` of its observation in the
  agent's episode and ``prev_action``, the action the agent executed after its previous
  observation (``EpisodeSteps`` keeps both per agent), so the server logs a transition only when
  it knows both ends and the action: after a failed request the agent acted without the
  server's answer, and only the agent can say what it did;
- connection errors, timeouts and 5xx answers (503: planning failed, retry) are retried with
  exponential backoff and jitter; a plan request keeps its body (``request_id`` included) on
  every retry, so the server answers a retry from its record and logs the transition once;
- a 4xx answer is the caller's mistake or a final refusal (409: a superseded ``request_id``) and
  is never retried: it raises ``APIError`` with the server's one-line ``error``;
- when the retries run out, the last failure is raised (``APIError`` for a 5xx answer,
  ``TransportError`` for no answer).

Observations, actions, no-fly zones and proposals may be lists or numpy arrays; they are sent as lists of floats.

``explain`` asks ``POST /v1/explain`` why an agent's action: for a served ``plan_id``, the agent's current
state, or a given observation (``plan(..., explain=True)`` gets a decision's explanation in its answer).

The same API over the fleet bus (Redis Streams) is ``serving.stream_client``'s ``StreamClient`` and
``AsyncStreamClient``, re-exported here.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import aiohttp
import numpy as np
import requests

from serving.episodes import ArrayLike, EpisodeSteps, plan_body
from serving.link import RETRY, APIError, ClientStats, FleetClientError, RetryPolicy, TransportError

__all__ = ["APIError", "AsyncFleetClient", "AsyncStreamClient", "ClientStats", "EpisodeSteps", "FleetClient",
           "FleetClientError", "RetryPolicy", "StreamClient", "TransportError", "explain_body", "plan_body"]


def __getattr__(name: str) -> Any:
    """The stream clients, loaded when first asked for: they bring redis and the bus codec (pyarrow with it)."""
    if name in ("AsyncStreamClient", "StreamClient"):
        from serving import stream_client

        return getattr(stream_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def explain_body(agent_id: str, plan_id: str | None = None, observation: ArrayLike | None = None,
                 objective: dict[str, Any] | None = None, proposals: Any | None = None) -> dict[str, Any]:
    """The JSON body of ``POST /v1/explain``; ``proposals``: (M, A) actions or (M, H, A) sequences."""
    body: dict[str, Any] = {"agent_id": agent_id}
    if plan_id is not None:
        body["plan_id"] = plan_id
    if observation is not None:
        body["observation"] = np.asarray(observation, np.float64).tolist()
    if objective is not None:
        body["objective"] = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in objective.items()}
    if proposals is not None:
        body["proposals"] = np.asarray(proposals, np.float64).tolist()
    return body


def _asked(body: dict[str, Any], mode: str, explain: bool) -> dict[str, Any]:
    """A plan body with the request's ``mode`` and ``explain`` (only when not their defaults)."""
    if mode != "plan":
        body["mode"] = mode
    if explain:
        body["explain"] = True
    return body


class FleetClient:
    """Blocking client over one ``requests.Session`` (connections kept alive); use it from one thread.

    Args:
        url: base URL of the endpoint, e.g. 'http://127.0.0.1:8000'.
        token: bearer token, when the endpoint requires one.
        timeout_s, retries, backoff_s, max_backoff_s: as ``serving.link.RetrySettings`` says; its defaults.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = RETRY.timeout_s,
                 retries: int = RETRY.retries, backoff_s: float = RETRY.backoff_s,
                 max_backoff_s: float = RETRY.max_backoff_s) -> None:
        self._p = RetryPolicy(url, token, timeout_s, retries, backoff_s, max_backoff_s)
        self._steps = EpisodeSteps()
        self._session = requests.Session()

    @property
    def stats(self) -> ClientStats:
        return self._p.stats

    def plan(self, agent_id: str, observation: ArrayLike, *, reward: float | None = None, terminated: bool = False,
             truncated: bool = False, objective: dict[str, Any] | None = None, deadline_ms: float | None = None,
             return_trajectory: bool = False, request_id: str | None = None, t: int | None = None,
             prev_action: ArrayLike | None = None, mode: str = "plan", explain: bool = False) -> dict[str, Any]:
        """The agent's next action and why: {"action": (A,), "model_version", "plan_id", "disagreement",
        "fallback", "fallback_reason", "decision", "shielded_constraint", "fallback_action_by", "margin", ...}.

        ``t`` defaults to the step after the agent's last call through this client (0 after a terminal one),
        ``prev_action`` to the action of its last answer; after a call that raised, pass ``prev_action`` (what
        the agent did instead). A call with the last call's ``request_id`` is a retry of that step.
        ``mode='policy'``: the served policy's action, without planning; ``explain``: the answer carries
        ``explanation`` (``explain``'s answer for this decision).
        """
        body = _asked(self._steps.body(agent_id, observation, reward=reward, terminated=terminated,
                                       truncated=truncated, objective=objective, deadline_ms=deadline_ms,
                                       return_trajectory=return_trajectory, request_id=request_id, t=t,
                                       prev_action=prev_action), mode, explain)
        return self._settled([body], lambda: [self._call("POST", "/v1/plan", body)])[0]

    def explain(self, agent_id: str, plan_id: str | None = None, *, observation: ArrayLike | None = None,
                objective: dict[str, Any] | None = None, proposals: Any | None = None) -> dict[str, Any]:
        """Why the agent's action (``POST /v1/explain``): the decision ``plan_id`` (served in the last 600 s),
        else the agent's current state or ``observation``; the chosen plan, the best alternatives, the fallback's
        action and each of ``proposals`` ((M, A) actions or (M, H, A) sequences), each with its predicted
        trajectory, return, disagreement and constraint margins."""
        return self._call("POST", "/v1/explain", explain_body(agent_id, plan_id, observation, objective, proposals))

    def plan_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Several agents in one call: ``plan`` keyword arguments as dicts; answers in the same order."""
        bodies = self._steps.batch(requests)
        return self._settled(bodies, lambda: self._call("POST", "/v1/plan/batch", {"requests": bodies})["responses"])

    def reset(self, agent_id: str) -> dict[str, Any]:
        """Forget the agent's episode on the server: {"agent_id", "reset": whether it had one}."""
        answer = self._call("POST", f"/v1/agents/{agent_id}/reset")
        self._steps.forget(agent_id)
        return answer

    def models(self) -> dict[str, Any]:
        return self._call("GET", "/v1/models")

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _settled(self, bodies: list[dict[str, Any]], call: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        try:
            answers = call()
        except FleetClientError:
            self._steps.settle(bodies, None)
            raise
        self._steps.settle(bodies, answers)
        return answers

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        def attempt() -> tuple[int, Any]:
            try:
                r = self._session.request(method, self._p.url + path, json=body, headers=self._p.headers,
                                          timeout=self._p.settings.timeout_s)
            except requests.Timeout as err:
                raise TransportError("timeout", str(err)) from None
            except requests.ConnectionError as err:
                raise TransportError("connection", str(err)) from None
            return r.status_code, r.json() if r.status_code < 400 else r.text

        return self._p.call_sync(method, path, attempt)


class AsyncFleetClient:
    """The same API for asyncio, over one aiohttp connection pool; use ``async with AsyncFleetClient(...)``.

    Args: those of ``FleetClient``, and ``connections``, the pool size (at least the number of
    requests in flight at once, e.g. the number of agents sharing the client).
    """

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = RETRY.timeout_s,
                 retries: int = RETRY.retries, backoff_s: float = RETRY.backoff_s,
                 max_backoff_s: float = RETRY.max_backoff_s, connections: int = 100) -> None:
        if connections < 1:
            raise ValueError(f"connections must be >= 1, got {connections}")
        self._p = RetryPolicy(url, token, timeout_s, retries, backoff_s, max_backoff_s)
        self._connections = connections
        self._steps = EpisodeSteps()
        self._session: aiohttp.ClientSession | None = None

    @property
    def stats(self) -> ClientStats:
        return self._p.stats

    async def plan(self, agent_id: str, observation: ArrayLike, *, reward: float | None = None,
                   terminated: bool = False, truncated: bool = False, objective: dict[str, Any] | None = None,
                   deadline_ms: float | None = None, return_trajectory: bool = False, request_id: str | None = None,
                   t: int | None = None, prev_action: ArrayLike | None = None, mode: str = "plan",
                   explain: bool = False) -> dict[str, Any]:
        """See ``FleetClient.plan``."""
        body = _asked(self._steps.body(agent_id, observation, reward=reward, terminated=terminated,
                                       truncated=truncated, objective=objective, deadline_ms=deadline_ms,
                                       return_trajectory=return_trajectory, request_id=request_id, t=t,
                                       prev_action=prev_action), mode, explain)
        return (await self._settled([body], "/v1/plan", body))[0]

    async def explain(self, agent_id: str, plan_id: str | None = None, *, observation: ArrayLike | None = None,
                      objective: dict[str, Any] | None = None, proposals: Any | None = None) -> dict[str, Any]:
        """See ``FleetClient.explain``."""
        return await self._call("POST", "/v1/explain",
                                explain_body(agent_id, plan_id, observation, objective, proposals))

    async def plan_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        bodies = self._steps.batch(requests)
        return await self._settled(bodies, "/v1/plan/batch", {"requests": bodies})

    async def reset(self, agent_id: str) -> dict[str, Any]:
        answer = await self._call("POST", f"/v1/agents/{agent_id}/reset")
        self._steps.forget(agent_id)
        return answer

    async def models(self) -> dict[str, Any]:
        return await self._call("GET", "/v1/models")

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "/healthz")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncFleetClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:  # created inside the running loop, as aiohttp requires
            connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=self._connections)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._p.headers,
                                                  timeout=aiohttp.ClientTimeout(total=self._p.settings.timeout_s))
        return self._session

    async def _settled(self, bodies: list[dict[str, Any]], path: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            answer = await self._call("POST", path, payload)
        except FleetClientError:
            self._steps.settle(bodies, None)
            raise
        answers = answer["responses"] if "requests" in payload else [answer]
        self._steps.settle(bodies, answers)
        return answers

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        session = self._open()

        async def attempt() -> tuple[int, Any]:
            try:
                async with session.request(method, self._p.url + path, json=body) as r:
                    text = await r.text()
            except asyncio.TimeoutError as err:
                raise TransportError("timeout", f"{type(err).__name__} {err}".strip()) from None
            except aiohttp.ClientError as err:
                raise TransportError("connection", f"{type(err).__name__}: {err}") from None
            return r.status, json.loads(text) if r.status < 400 else text

        return await self._p.call(method, path, attempt)
