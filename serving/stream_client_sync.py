"""The blocking fleet-bus client, ``StreamClient``, and what both stream clients share: how a plan body becomes a
request entry, how a reply becomes an outcome for ``RetryPolicy``, how a Redis error becomes a ``TransportError``.

See ``serving.stream_client`` for the contract both clients keep (cursors, retries, errors).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from serving.bus import BusNames, StreamReply, decode_reply, encode_request
from serving.episodes import ArrayLike, EpisodeSteps
from serving.link import REDIS_SCHEMES, RETRY, ClientStats, FleetClientError, RetryPolicy, TransportError
from serving.schema import REQUEST_ID_PATTERN
from worldmodel.data.writer import AGENT_ID_PATTERN

READ_COUNT = 64
"""Entries read per reply stream per ``XREAD``."""
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


def request_fields(body: dict[str, Any]) -> tuple[str, str, dict[bytes, bytes]]:
    """(agent_id, request_id, entry fields) of a plan body; a fresh request_id when it has none (the reply must
    name it). Raises ValueError for ids the server could not read: it could not reply, only dead-letter."""
    agent, rid = body.get("agent_id"), body.get("request_id")
    if not isinstance(agent, str) or not AGENT_ID_PATTERN.fullmatch(agent):
        raise ValueError(f"agent_id must match {AGENT_ID_PATTERN.pattern}, got {agent!r}")
    if rid is None:
        rid = uuid.uuid4().hex
        body = body | {"request_id": rid}
    if not isinstance(rid, str) or not _REQUEST_ID.fullmatch(rid):
        raise ValueError(f"request_id must match {REQUEST_ID_PATTERN}, got {rid!r}")
    image = body.get("image")
    if isinstance(image, (bytes, bytearray, memoryview)):  # a camera frame: its raw bytes in their own field
        return agent, rid, encode_request({k: v for k, v in body.items() if k != "image"}, bytes(image))
    return agent, rid, encode_request(body)


def outcome(reply: StreamReply) -> tuple[int, Any]:
    """A reply as ``RetryPolicy`` takes an exchange's outcome: (status, answer) or (status, error text)."""
    return reply.status, reply.body if reply.ok else json.dumps(reply.body)


def transport_error(err: redis.RedisError) -> TransportError:
    kind = "timeout" if isinstance(err, redis.TimeoutError) else "connection"
    return TransportError(kind, f"redis: {type(err).__name__}: {err}")



class StreamClient:
    """The blocking client over one connection (use it from one thread): per call, ``XADD`` the request, then
    ``XREAD BLOCK`` the agent's reply stream until its reply comes or the attempt's time is up.

    Args: those of ``AsyncStreamClient`` but ``block_ms``.
    """

    def __init__(self, redis_url: str, *, prefix: str = "fleetwm", timeout_s: float = RETRY.timeout_s,
                 retries: int = RETRY.retries, backoff_s: float = RETRY.backoff_s,
                 max_backoff_s: float = RETRY.max_backoff_s) -> None:
        self._p = RetryPolicy(redis_url, None, timeout_s, retries, backoff_s, max_backoff_s, schemes=REDIS_SCHEMES)
        self._names, self._steps = BusNames(prefix), EpisodeSteps()
        self._cursors: dict[str, bytes] = {}  # agent -> last reply entry id read (or the stream's end at its start)
        # A read blocks for up to timeout_s: the socket waits a little longer, so the block ends first.
        self._redis = redis.Redis.from_url(redis_url, max_connections=1,  # connected at the first call
                                           client_name=f"{prefix}-client", socket_timeout=timeout_s + 1.0,
                                           socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))

    @property
    def stats(self) -> ClientStats:
        return self._p.stats

    def plan(self, agent_id: str, observation: ArrayLike, *, reward: float | None = None, terminated: bool = False,
             truncated: bool = False, objective: dict[str, Any] | None = None, deadline_ms: float | None = None,
             return_trajectory: bool = False, request_id: str | None = None, t: int | None = None,
             prev_action: ArrayLike | None = None) -> dict[str, Any]:
        """The agent's next action, as ``serving.client.FleetClient.plan`` answers it (the same options)."""
        body = self._steps.body(agent_id, observation, reward=reward, terminated=terminated, truncated=truncated,
                                objective=objective, deadline_ms=deadline_ms, return_trajectory=return_trajectory,
                                request_id=request_id, t=t, prev_action=prev_action)
        try:
            answer = self.send(body)
        except FleetClientError:
            self._steps.settle([body], None)
            raise
        self._steps.settle([body], [answer])
        return answer

    def send(self, body: dict[str, Any]) -> dict[str, Any]:
        """See ``AsyncStreamClient.send``."""
        agent, rid, fields = request_fields(body)

        def attempt() -> tuple[int, Any]:
            deadline = time.monotonic() + self._p.settings.timeout_s
            try:
                self._add(agent, fields)
                return outcome(self._reply(agent, rid, deadline))
            except redis.RedisError as err:
                raise transport_error(err) from None

        return self._p.call_sync("XADD", f" {self._names.requests}", attempt)

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _add(self, agent: str, fields: dict[bytes, bytes]) -> None:
        if agent in self._cursors:
            self._redis.xadd(self._names.requests, fields)
            return
        pipe = self._redis.pipeline(transaction=False)
        pipe.xrevrange(self._names.reply(agent), count=1)  # before the request: where its replies start
        pipe.xadd(self._names.requests, fields)
        last, _ = pipe.execute()
        self._cursors[agent] = last[0][0] if last else b"0-0"

    def _reply(self, agent: str, rid: str, deadline: float) -> StreamReply:
        """The reply to ``rid``, read from the agent's cursor on; other replies are skipped."""
        stream = self._names.reply(agent)
        while (left_s := deadline - time.monotonic()) > 0:
            got = self._redis.xread({stream: self._cursors[agent]}, count=READ_COUNT, block=max(1, int(left_s * 1000)))
            for entry_id, fields in got[0][1] if got else ():
                self._cursors[agent] = entry_id
                try:
                    reply = decode_reply(fields)
                except ValueError:
                    continue  # not a fleetwm reply
                if reply.request_id == rid:
                    return reply
        raise TransportError("timeout", f"no reply within {self._p.settings.timeout_s:g} s")
