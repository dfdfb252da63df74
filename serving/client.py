"""Python clients of the fleet endpoint's HTTP API v1: ``FleetClient`` (blocking) and ``AsyncFleetClient``.

Both send the same bodies and handle failures the same way:

- connection errors, timeouts and 5xx answers (503: planning failed, retry) are retried with
  exponential backoff and jitter; a plan request keeps its ``request_id`` on every retry, so
  the server answers a retry from its record and logs the transition once;
- a 4xx answer is the caller's mistake and is never retried: it raises ``APIError`` with the
  server's one-line ``error`` (which names the field);
- when the retries run out, the last failure is raised (``APIError`` for a 5xx answer,
  ``TransportError`` for no answer).

Observations (and no-fly zones) may be lists or numpy arrays; they are sent as lists of floats.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generator, Sequence

import aiohttp
import numpy as np
import requests

ArrayLike = Sequence[float] | np.ndarray


@dataclass
class ClientStats:
    """What a client has done so far (counts over its lifetime)."""

    calls: int = 0
    """Logical calls (a call and all its retries count once)."""
    attempts: int = 0
    """HTTP attempts, retries included."""
    retries: int = 0
    """Attempts after the first of a call."""
    failures: int = 0
    """Calls that raised (4xx, or retries exhausted)."""


class FleetClientError(Exception):
    """A call to the fleet endpoint failed; ``kind`` says how (for counting errors by kind)."""

    kind = "error"


class APIError(FleetClientError):
    """The endpoint answered with an error status; ``message`` is its one-line ``error``."""

    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.detail = status, message, detail

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"http_{self.status}"


class TransportError(FleetClientError):
    """No answer after every attempt: ``kind`` is 'timeout' or 'connection'."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def plan_body(agent_id: str, observation: ArrayLike, *, reward: float | None = None, done: bool = False,
              truncated: bool = False, objective: dict[str, Any] | None = None, deadline_ms: float | None = None,
              return_trajectory: bool = False, request_id: str | None = None) -> dict[str, Any]:
    """The JSON body of one plan request, with a fresh ``request_id`` (uuid4 hex) when none is given.

    Args:
        observation: (S,) list or array.
        objective: {"name": "learned" | "goal", "no_fly_zones": (Z, 3) list or array}; None: the server's default.
    """
    obs = np.asarray(observation, dtype=np.float64)
    if obs.ndim != 1:
        raise ValueError(f"observation must be one vector (S,), got shape {obs.shape}")
    body: dict[str, Any] = {"agent_id": agent_id, "observation": obs.tolist(),
                            "request_id": request_id or uuid.uuid4().hex}
    if reward is not None:
        body["reward"] = float(reward)
    if done:
        body["done"] = True
    if truncated:
        body["truncated"] = True
    if objective is not None:
        body["objective"] = _objective(objective)
    if deadline_ms is not None:
        body["deadline_ms"] = float(deadline_ms)
    if return_trajectory:
        body["return_trajectory"] = True
    return body


def _objective(objective: dict[str, Any]) -> dict[str, Any]:
    out = dict(objective)
    if "no_fly_zones" in out:
        out["no_fly_zones"] = np.asarray(out["no_fly_zones"], dtype=np.float64).reshape(-1, 3).tolist()
    return out


def _with_request_ids(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batch items (``plan`` keyword arguments with agent_id and observation) as bodies, each with a request_id."""
    out = []
    for i, body in enumerate(bodies):
        try:
            out.append(plan_body(**body))
        except TypeError as err:
            raise ValueError(f"requests[{i}]: {err} (keys: {sorted(body)})") from None
    return out


class RetryPolicy:
    """URL, token, timeout and retry settings shared by the clients and the simulated fleet's links,
    checked at construction."""

    def __init__(self, url: str, token: str | None, timeout_s: float, retries: int, backoff_s: float = 0.05,
                 max_backoff_s: float = 1.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or max_backoff_s < backoff_s:
            raise ValueError(f"need timeout_s > 0, retries >= 0 and 0 <= backoff_s <= max_backoff_s; got "
                             f"timeout_s={timeout_s}, retries={retries}, backoff_s={backoff_s}, "
                             f"max_backoff_s={max_backoff_s}")
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s, self.retries, self.backoff_s, self.max_backoff_s = timeout_s, retries, backoff_s, max_backoff_s
        self.stats = ClientStats()

    def delay(self, attempt: int) -> float:
        """Seconds before retry ``attempt`` (1, 2, ...): exponential, capped, with half of it random."""
        cap = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return cap / 2 + random.uniform(0, cap / 2)

    def error(self, status: int, text: str) -> APIError:
        try:
            body = json.loads(text)
            return APIError(status, str(body.get("error", text[:200])), body.get("detail"))
        except (ValueError, AttributeError):
            return APIError(status, text[:200] or "no body")

    def call_sync(self, method: str, path: str, attempt: Callable[[], tuple[int, Any]]) -> Any:
        """The blocking clients' retry loop (``_retrying``) around ``attempt``, one HTTP exchange: it returns
        the status and the decoded JSON answer (below 400) or the body's text, and raises ``TransportError``
        when no answer came."""
        loop = self._retrying(method, path)
        wait = next(loop)
        while True:
            if wait:
                time.sleep(wait)
            try:
                outcome: tuple[int, Any] | TransportError = attempt()
            except TransportError as err:
                outcome = err
            try:
                wait = loop.send(outcome)
            except StopIteration as done:
                return done.value

    async def call(self, method: str, path: str, attempt: Callable[[], Awaitable[tuple[int, Any]]]) -> Any:
        """``call_sync`` for asyncio: ``attempt`` is a coroutine function."""
        loop = self._retrying(method, path)
        wait = next(loop)
        while True:
            if wait:
                await asyncio.sleep(wait)
            try:
                outcome: tuple[int, Any] | TransportError = await attempt()
            except TransportError as err:
                outcome = err
            try:
                wait = loop.send(outcome)
            except StopIteration as done:
                return done.value

    def _retrying(self, method: str, path: str) -> Generator[float, tuple[int, Any] | TransportError, Any]:
        """The retry loop, whoever does the waiting and the exchanges: it yields the seconds to wait before
        each attempt and is sent the attempt's outcome, (status, payload) or the ``TransportError``; it
        returns the payload of the first answer below 400. Connection errors, timeouts and 5xx are retried
        after ``delay``; a 4xx is not. It raises the last failure when the retries run out."""
        self.stats.calls += 1
        for n in range(self.retries + 1):
            wait = 0.0
            if n:
                self.stats.retries += 1
                wait = self.delay(n)
            self.stats.attempts += 1
            outcome = yield wait
            if isinstance(outcome, TransportError):
                last: FleetClientError = outcome
                continue
            status, payload = outcome
            if status < 400:
                return payload
            last = self.error(status, payload)
            if status < 500:
                break
        self.stats.failures += 1
        raise self.exhausted(method, path, last)

    def exhausted(self, method: str, path: str, err: FleetClientError) -> FleetClientError:
        if isinstance(err, APIError):
            return err
        return TransportError(err.kind, f"{method} {self.url}{path}: no answer after {self.retries + 1} attempts "
                                        f"(timeout {self.timeout_s:g} s): {err}")


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
        self._session = requests.Session()

    @property
    def stats(self) -> ClientStats:
        return self._p.stats

    def plan(self, agent_id: str, observation: ArrayLike, *, reward: float | None = None, done: bool = False,
             truncated: bool = False, objective: dict[str, Any] | None = None, deadline_ms: float | None = None,
             return_trajectory: bool = False, request_id: str | None = None) -> dict[str, Any]:
        """The agent's next action: {"action": (A,), "model_version", "plan_id", "uncertainty", "fallback", ...}."""
        body = plan_body(agent_id, observation, reward=reward, done=done, truncated=truncated, objective=objective,
                         deadline_ms=deadline_ms, return_trajectory=return_trajectory, request_id=request_id)
        return self._call("POST", "/v1/plan", body)

    def plan_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Several agents in one call: ``plan`` keyword arguments as dicts; answers in the same order."""
        return self._call("POST", "/v1/plan/batch", {"requests": _with_request_ids(requests)})["responses"]

    def reset(self, agent_id: str) -> dict[str, Any]:
        """Forget the agent's episode on the server: {"agent_id", "reset": whether it had one}."""
        return self._call("POST", f"/v1/agents/{agent_id}/reset")

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
        self._session: aiohttp.ClientSession | None = None

    @property
    def stats(self) -> ClientStats:
        return self._p.stats

    async def plan(self, agent_id: str, observation: ArrayLike, *, reward: float | None = None, done: bool = False,
                   truncated: bool = False, objective: dict[str, Any] | None = None, deadline_ms: float | None = None,
                   return_trajectory: bool = False, request_id: str | None = None) -> dict[str, Any]:
        """See ``FleetClient.plan``."""
        body = plan_body(agent_id, observation, reward=reward, done=done, truncated=truncated, objective=objective,
                         deadline_ms=deadline_ms, return_trajectory=return_trajectory, request_id=request_id)
        return await self._call("POST", "/v1/plan", body)

    async def plan_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return (await self._call("POST", "/v1/plan/batch", {"requests": _with_request_ids(requests)}))["responses"]

    async def reset(self, agent_id: str) -> dict[str, Any]:
        return await self._call("POST", f"/v1/agents/{agent_id}/reset")

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
