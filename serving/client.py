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

Observations, actions and no-fly zones may be lists or numpy arrays; they are sent as lists of floats.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import aiohttp
import numpy as np
import requests

from serving.link import APIError, ClientStats, FleetClientError, RetryPolicy, TransportError

__all__ = ["APIError", "AsyncFleetClient", "ClientStats", "EpisodeSteps", "FleetClient", "FleetClientError",
           "RetryPolicy", "TransportError", "plan_body"]

ArrayLike = Sequence[float] | np.ndarray


def plan_body(agent_id: str, observation: ArrayLike, *, reward: float | None = None, terminated: bool = False,
              truncated: bool = False, objective: dict[str, Any] | None = None, deadline_ms: float | None = None,
              return_trajectory: bool = False, request_id: str | None = None, t: int | None = None,
              prev_action: ArrayLike | None = None) -> dict[str, Any]:
    """The JSON body of one plan request, with a fresh ``request_id`` (uuid4 hex) when none is given.

    Args:
        observation: (S,) list or array.
        objective: {"name": "learned" | "goal", "no_fly_zones": (Z, 3) list or array}; None: the server's default.
        t: step index of ``observation`` in the agent's episode (0 at its first observation).
        prev_action: (A,) the action the agent executed after its previous observation.
    """
    body: dict[str, Any] = {"agent_id": agent_id, "observation": _vector("observation", observation, "S"),
                            "request_id": request_id or uuid.uuid4().hex}
    if t is not None:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
            raise ValueError(f"t must be an integer >= 0 (the observation's step index), got {t!r}")
        body["t"] = int(t)
    if prev_action is not None:
        body["prev_action"] = _vector("prev_action", prev_action, "A")
    if reward is not None:
        body["reward"] = float(reward)
    if terminated:
        body["terminated"] = True
    if truncated:
        body["truncated"] = True
    if objective is not None:
        body["objective"] = _objective(objective)
    if deadline_ms is not None:
        body["deadline_ms"] = float(deadline_ms)
    if return_trajectory:
        body["return_trajectory"] = True
    return body


def _vector(name: str, values: ArrayLike, dim: str) -> list[float]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one vector ({dim},), got shape {array.shape}")
    return array.tolist()


def _objective(objective: dict[str, Any]) -> dict[str, Any]:
    out = dict(objective)
    if "no_fly_zones" in out:
        out["no_fly_zones"] = np.asarray(out["no_fly_zones"], dtype=np.float64).reshape(-1, 3).tolist()
    return out


@dataclass
class _Where:
    """One agent's place in its episode, as its client last saw it."""

    t: int = 0
    """Step index of the agent's next observation."""
    action: list[float] | None = None
    """(A,) the last answer's action, what the agent executes unless it reports otherwise; None without one."""
    failed: bool = False
    """The agent's last call got no answer: only the caller knows what the agent did instead."""
    last: dict[str, Any] | None = None
    """The agent's last body: a call reusing its request_id is a retry and resends its t and prev_action."""


class EpisodeSteps:
    """Per agent, the step index of its next observation and the action it was last given, so that every plan
    body carries ``t`` and ``prev_action``; a caller's own ``t`` or ``prev_action`` wins. It holds one small entry
    per agent the client has served (``forget`` drops one)."""

    def __init__(self) -> None:
        self._agents: dict[str, _Where] = {}

    def body(self, agent_id: str, observation: ArrayLike, **options: Any) -> dict[str, Any]:
        """``plan_body`` with ``t`` and ``prev_action`` filled in; raises ``ValueError`` when the agent's previous
        call failed and the caller does not say what the agent executed (the server would log a guess)."""
        where = self._agents.setdefault(agent_id, _Where())
        last = where.last
        if last is not None and options.get("request_id") == last["request_id"]:  # a retry: the same step
            options["t"] = last.get("t") if options.get("t") is None else options["t"]
            if options.get("prev_action") is None:
                options["prev_action"] = last.get("prev_action")
            return plan_body(agent_id, observation, **options)
        t = where.t if options.get("t") is None else options["t"]
        if options.get("prev_action") is None and t > 0:
            if where.failed:
                raise ValueError(f"agent {agent_id!r}: its previous plan request failed, so the client cannot "
                                 "report the action it executed; pass prev_action= (what the agent did instead), or t=0 to start "
                                 "a new episode")
            options["prev_action"] = where.action
        return plan_body(agent_id, observation, **(options | {"t": t}))

    def settle(self, bodies: list[dict[str, Any]], answers: list[dict[str, Any]] | None) -> None:
        """Record what came of ``bodies``: their ``answers`` in order, or None when the call failed."""
        for i, body in enumerate(bodies):
            where = self._agents.setdefault(body["agent_id"], _Where())
            ended = bool(body.get("terminated") or body.get("truncated"))  # the next observation starts an episode
            where.t = 0 if ended else body["t"] + 1
            where.action = None if ended or answers is None else list(answers[i]["action"])
            where.failed = answers is None and not ended
            where.last = body

    def forget(self, agent_id: str) -> None:
        """The agent's episode was reset on the server: its next observation is step 0."""
        self._agents.pop(agent_id, None)

    def batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Batch items (``plan`` keyword arguments with agent_id and observation) as bodies."""
        out = []
        for i, item in enumerate(requests):
            try:
                out.append(self.body(**item))
            except TypeError as err:
                raise ValueError(f"requests[{i}]: {err} (keys: {sorted(item)})") from None
        return out


class FleetClient:
    """Blocking client over one ``requests.Session`` (connections kept alive); use it from one thread.

    Args:
        url: base URL of the endpoint, e.g. 'http://127.0.0.1:8000'.
        token: bearer token, when the endpoint requires one.
        timeout_s: per attempt (connect + answer).
        retries: extra attempts after a connection error, timeout or 5xx.
        backoff_s / max_backoff_s: the first retry waits about ``backoff_s``, doubling up to ``max_backoff_s``.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 2.0, retries: int = 3,
                 backoff_s: float = 0.05, max_backoff_s: float = 1.0) -> None:
        self._p = RetryPolicy(url, token, timeout_s, retries, backoff_s, max_backoff_s)
        self._steps = EpisodeSteps()
        self._session = requests.Session()

    @property
    def stats(self) -> ClientStats:
        return self._p.stats

    def plan(self, agent_id: str, observation: ArrayLike, *, reward: float | None = None, terminated: bool = False,
             truncated: bool = False, objective: dict[str, Any] | None = None, deadline_ms: float | None = None,
             return_trajectory: bool = False, request_id: str | None = None, t: int | None = None,
             prev_action: ArrayLike | None = None) -> dict[str, Any]:
        """The agent's next action: {"action": (A,), "model_version", "plan_id", "disagreement", "fallback",
        "fallback_reason", ...}.

        ``t`` defaults to the step after the agent's last call through this client (0 after a terminal one),
        ``prev_action`` to the action of its last answer; after a call that raised, pass ``prev_action`` (what
        the agent did instead). A call with the last call's ``request_id`` is a retry of that step.
        """
        body = self._steps.body(agent_id, observation, reward=reward, terminated=terminated, truncated=truncated,
                                objective=objective, deadline_ms=deadline_ms, return_trajectory=return_trajectory,
                                request_id=request_id, t=t, prev_action=prev_action)
        return self._settled([body], lambda: [self._call("POST", "/v1/plan", body)])[0]

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
                                          timeout=self._p.timeout_s)
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

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 2.0, retries: int = 3,
                 backoff_s: float = 0.05, max_backoff_s: float = 1.0, connections: int = 100) -> None:
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
                   t: int | None = None, prev_action: ArrayLike | None = None) -> dict[str, Any]:
        """See ``FleetClient.plan``."""
        body = self._steps.body(agent_id, observation, reward=reward, terminated=terminated, truncated=truncated,
                                objective=objective, deadline_ms=deadline_ms, return_trajectory=return_trajectory,
                                request_id=request_id, t=t, prev_action=prev_action)
        return (await self._settled([body], "/v1/plan", body))[0]

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
                                                  timeout=aiohttp.ClientTimeout(total=self._p.timeout_s))
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
