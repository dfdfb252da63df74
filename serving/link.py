"""The line from a client to the fleet endpoint: errors by kind, the retry settings and policy, and ``AgentLink``.

``RetryPolicy`` is the contract every client follows (``serving.client``'s two clients, the stream clients of
``serving.stream_client`` and the simulated fleet's links): connection errors, timeouts and 5xx are retried
with backoff and jitter on the same body, a 4xx is final (409 included: the server refused a superseded
request id), and failures are counted by kind.

``AgentLink`` is one simulated agent's lean HTTP/1.1 keep-alive connection. The simulated fleet
(``serving.fleet``) shares its machine with the endpoint it measures, so what it spends per request is taken
from the endpoint: through ``AsyncFleetClient`` (aiohttp) a request costs the fleet about 0.35 ms of CPU, as
much as half the ingress's; an ``AgentLink`` writes one request and parses one answer on its own connection.
It reads answers with a ``Content-Length`` (as the endpoint, HAProxy and uvicorn send them) or ended by
closing the connection; a chunked answer is a protocol error. Applications should use ``AsyncFleetClient``.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generator
from urllib.parse import urlsplit


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


@dataclass(frozen=True)
class RetrySettings:
    """How long a client waits for an answer and how it retries; checked at construction."""

    timeout_s: float = 2.0
    """Seconds per attempt (connect + answer)."""
    retries: int = 3
    """Extra attempts after a connection error, timeout or 5xx (a 4xx is final)."""
    backoff_s: float = 0.05
    """The first retry waits about this many seconds, each further one about twice as long."""
    max_backoff_s: float = 1.0
    """Longest wait before a retry."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.retries < 0 or self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(f"need timeout_s > 0, retries >= 0 and 0 <= backoff_s <= max_backoff_s; got {self}")


RETRY = RetrySettings()
"""The default timeout and retries of both clients, ``RetryPolicy`` and ``FleetConfig`` (so `wm fleet`'s flags)."""


HTTP_SCHEMES = ("http://", "https://")
"""URL schemes of the fleet endpoint's HTTP API."""
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
"""URL schemes of the fleet bus (a Redis server), as ``redis.Redis.from_url`` reads them."""


class RetryPolicy:
    """URL, token and ``RetrySettings`` shared by the clients and the simulated fleet's links; counts their calls.

    ``schemes``: the URL schemes the caller's transport speaks (HTTP's, or the stream clients' ``REDIS_SCHEMES``).
    """

    def __init__(self, url: str, token: str | None, timeout_s: float = RETRY.timeout_s, retries: int = RETRY.retries,
                 backoff_s: float = RETRY.backoff_s, max_backoff_s: float = RETRY.max_backoff_s, *,
                 schemes: tuple[str, ...] = HTTP_SCHEMES) -> None:
        if not url.startswith(schemes):
            raise ValueError(f"url must start with {' or '.join(schemes)}, got {url!r}")
        self.settings = RetrySettings(timeout_s, retries, backoff_s, max_backoff_s)
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.stats = ClientStats()

    def delay(self, attempt: int) -> float:
        """Seconds before retry ``attempt`` (1, 2, ...): exponential, capped, with half of it random."""
        cap = min(self.settings.max_backoff_s, self.settings.backoff_s * 2 ** (attempt - 1))
        return cap / 2 + random.uniform(0, cap / 2)

    def error(self, status: int, text: str) -> APIError:
        try:
            body = json.loads(text)
            return APIError(status, str(body.get("error", text[:200])), body.get("detail"))
        except (ValueError, AttributeError):
            return APIError(status, text[:200] or "no body")

    def call_sync(self, method: str, path: str, attempt: Callable[[], tuple[int, Any]]) -> Any:
        """The blocking clients' retry loop (``_retrying``) around ``attempt``, one HTTP exchange: it returns the
        status and the decoded JSON answer (below 400) or the body's text; no answer raises ``TransportError``."""
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
        """The retry loop, whoever does the waiting and the exchanges: it yields the seconds to wait before each
        attempt and is sent the attempt's outcome, (status, payload) or the ``TransportError``; it returns the
        payload of the first answer below 400. Connection errors, timeouts and 5xx are retried after ``delay``; a
        4xx is final (a 409 included: the server refused a superseded request id, and sending it again cannot
        change that). It raises the last failure when the retries run out."""
        self.stats.calls += 1
        for n in range(self.settings.retries + 1):
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
        return TransportError(err.kind, f"{method} {self.url}{path}: no answer after {self.settings.retries + 1} "
                                        f"attempts (timeout {self.settings.timeout_s:g} s): {err}")


class ProtocolError(Exception):
    """An answer this link cannot read."""


class _Http11(asyncio.Protocol):
    """The connection: one request at a time; ``answer`` resolves to (status, body, keep_alive)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.head: tuple[int, int | None, bool] | None = None  # status, content length, keep-alive
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.answer is None or self.answer.done():
            return
        try:
            self._parse()
        except (ValueError, IndexError, ProtocolError) as err:
            self.answer.set_exception(ProtocolError(f"unreadable answer: {err}"))

    def _parse(self) -> None:
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            del self.buffer[:end + 4]
            status, length, keep = int(lines[0].split(" ", 2)[1]), None, not lines[0].startswith("HTTP/1.0")
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection":
                    keep = value != "close"
                elif name == "transfer-encoding" and value != "identity":
                    raise ProtocolError(f"transfer-encoding {value} is not supported")
            self.head = (status, length, keep and length is not None)
        status, length, keep = self.head
        if length is not None and len(self.buffer) >= length:
            body = bytes(self.buffer[:length])
            del self.buffer[:length]
            self.head = None
            # Bytes past the answer belong to no request: the connection is not reused.
            self.answer.set_result((status, body, keep and not self.buffer))  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answer is None or self.answer.done():
            return
        if self.head is not None and self.head[1] is None:  # no length: the body ran until the close
            self.answer.set_result((self.head[0], bytes(self.buffer), False))
        else:
            self.answer.set_exception(ConnectionError(f"connection closed{f': {exc}' if exc else ''}"))


class AgentLink:
    """POSTs JSON bodies over one kept-alive connection, as ``AsyncFleetClient`` does over its pool.

    Args:
        policy: URL, token, timeout and retries (``RetryPolicy``); links may share one,
            and then its ``stats`` count all their calls.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self._p = policy
        parts = urlsplit(policy.url)
        self._host, self._path = parts.hostname or "127.0.0.1", parts.path
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        auth = "".join(f"{k}: {v}\r\n" for k, v in policy.headers.items())
        self._headers = f"Host: {parts.netloc}\r\nContent-Type: application/json\r\n{auth}"
        self._conn: _Http11 | None = None

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        """The decoded JSON answer; raises ``APIError`` or ``TransportError`` as the clients do."""
        p = self._p
        data = json.dumps(body, separators=(",", ":")).encode()
        request = f"POST {self._path}{path} HTTP/1.1\r\n{self._headers}Content-Length: {len(data)}\r\n\r\n".encode()

        async def attempt() -> tuple[int, Any]:
            try:
                status, text = await self._exchange(request + data)
                return status, json.loads(text) if status < 400 else text.decode("utf-8", "replace")
            except asyncio.TimeoutError:
                raise TransportError("timeout", f"no answer within {p.settings.timeout_s:g} s") from None
            except (OSError, ValueError, ProtocolError) as err:  # ValueError: a body that is not JSON
                raise TransportError("connection", f"{type(err).__name__}: {err}") from None

        return await p.call("POST", path, attempt)

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        """One request and its answer on a clean connection. Whatever ends it otherwise (a timeout, an error,
        the caller's cancellation) closes the connection, so a late answer is never read as the next one's."""
        loop = asyncio.get_running_loop()
        done = False
        try:
            async with asyncio.timeout(self._p.settings.timeout_s):  # connecting and answering, as the clients count it
                conn = self._conn
                if conn is None or conn.closed or conn.buffer or conn.head is not None:
                    self.close()
                    _, conn = await loop.create_connection(_Http11, self._host, self._port, ssl=self._ssl)
                    self._conn = conn
                conn.answer = loop.create_future()
                conn.transport.write(request)  # type: ignore[union-attr]
                status, body, keep = await conn.answer
            done = keep
            return status, body
        finally:
            if not done:
                self.close()

    def close(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None
