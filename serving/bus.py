"""Streaming control over the fleet bus: what a plan request and its reply look like on Redis Streams.

An agent (or a fleet gateway speaking for many) adds a request to ``BusNames.requests``: one field,
``v``, holding the JSON body of ``POST /v1/plan`` (API v1, ``serving.schema.PlanRequest``). The fleet
endpoint's stream consumers (``serving.stream_consumer``) read it in batches, plan, and add the reply
to the agent's reply stream ``BusNames.reply(agent_id)``: one field, ``v``, holding

    {"request_id": ..., "status": 200, <every field of PlanResponse>}     (an answer)
    {"request_id": ..., "status": 409 | 422 | 503, "error": "<one line>"}  (a refusal)

``status`` keeps HTTP's meaning: a 4xx is final, a 503 may be retried with the same ``request_id``.
A request with ``explain: true`` (or ``{"proposals": [...]}``) gets ``explanation`` in its answer: what
``POST /v1/explain`` answers for that decision (``serving.explain``), the stream's way to ask why.
A request without a ``request_id`` gets its stream entry id as one, so a re-delivered entry is answered
from the agent's record, not planned twice. Reply streams hold the last ``REPLY_MAXLEN`` replies
(approximately) and expire about ``REPLY_TTL_S`` after their last reply, so agents that leave leave nothing.

A camera agent's frame travels as its raw (H, W, C) uint8 bytes in the entry's own field ``img`` (codec version 2,
``CODEC_VERSION``), beside the JSON body without ``image``: no base64 on the bus. Version 1 entries (``v`` alone)
read as before.

A request that cannot be read (not JSON, an invalid field, a wrong length) goes to
``BusNames.request_dead_letters`` with the reason; when its ``agent_id`` can be read, the agent also gets
a 422 reply, so it does not wait for a timeout.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from actors.bus_names import BusNames
from serving.schema import PlanRequest
from worldmodel.data.writer import AGENT_ID_PATTERN

FIELD = b"v"
"""The JSON field of a request or reply entry."""
IMAGE_FIELD = b"img"
"""A request's camera frame, raw bytes (codec version 2)."""
CODEC_VERSION = 2
"""Request entries written: 1, the JSON body alone; 2, optionally its frame in ``IMAGE_FIELD``. Both read."""
REPLY_MAXLEN = 16
"""Replies kept per agent (approximately): an agent reads its reply within one control period."""
REPLY_TTL_S = 3600
"""A reply stream expires this long after its last reply."""
__all__ = ["CODEC_VERSION", "FIELD", "IMAGE_FIELD", "REPLY_MAXLEN", "REPLY_TTL_S", "BadMessage", "BusNames",
           "StreamReply", "decode_reply", "decode_request", "encode_reply", "encode_request", "to_json"]


class BadMessage(ValueError):
    """A request entry that cannot be planned: the one-line reason, and its agent when it can be read."""

    def __init__(self, reason: str, agent_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.agent_id = reason, agent_id


@dataclass(frozen=True)
class StreamReply:
    """One reply as a client reads it."""

    request_id: str
    status: int
    """200: ``body`` is the answer (``PlanResponse``'s fields); else ``body`` is ``{"error": ...}``."""
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == 200


def encode_request(body: dict[str, Any], image: bytes | None = None) -> dict[bytes, bytes]:
    """The entry fields of a request body (a ``POST /v1/plan`` body, e.g. ``serving.episodes.plan_body``'s), and
    a camera agent's frame as its raw (H, W, C) uint8 bytes (the body then has no ``image``)."""
    fields = {FIELD: json.dumps(body, separators=(",", ":"), allow_nan=False).encode()}
    if image is not None:
        if "image" in body:
            raise ValueError("give the frame as image bytes or in the body, not both")
        fields[IMAGE_FIELD] = bytes(image)
    return fields


def decode_request(entry_id: bytes | str, fields: dict[bytes, bytes] | None) -> PlanRequest:
    """The request of one entry, its ``request_id`` defaulting to the entry id.

    Raises:
        BadMessage: not one ``v`` field of JSON, or not a valid ``PlanRequest`` (the reason names the field).
    """
    raw = (fields or {}).get(FIELD)
    if raw is None:
        raise BadMessage(f"entry has no {FIELD.decode()!r} field")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadMessage(f"not JSON: {str(err).splitlines()[0][:120]}") from None
    agent = data.get("agent_id") if isinstance(data, dict) else None
    agent = agent if isinstance(agent, str) and AGENT_ID_PATTERN.fullmatch(agent) else None
    if isinstance(data, dict) and data.get("request_id") is None:
        data["request_id"] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    image = (fields or {}).get(IMAGE_FIELD)
    if image is not None and isinstance(data, dict):
        if "image" in data:
            raise BadMessage(f"image: given both in the body and in the {IMAGE_FIELD.decode()!r} field", agent)
        data["image"] = bytes(image)  # raw bytes: the schema takes them as they are
    try:
        return PlanRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise BadMessage(f"{where}: {first.get('msg', 'invalid')}", agent) from None


def encode_reply(request_id: str, status: int, body: dict[str, Any]) -> dict[bytes, bytes]:
    """The entry fields of a reply: ``body`` is an answer's public body (200) or ``{"error": ...}``."""
    return {FIELD: to_json({"request_id": request_id, "status": status, **body})}


def decode_reply(fields: dict[bytes, bytes]) -> StreamReply:
    """A reply entry as ``StreamReply``.

    Raises:
        ValueError: the entry is not a reply (no ``v`` field of JSON with ``request_id`` and ``status``).
    """
    try:
        data = json.loads(fields[FIELD])
        return StreamReply(str(data.pop("request_id")), int(data.pop("status")), data)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"not a fleetwm reply entry: {err}") from None


def to_json(payload: dict[str, Any]) -> bytes:
    """``payload`` as compact JSON, a non-finite number (a diverging model's) as null: the HTTP routes' and
    the replies' encoding."""
    try:
        return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(payload), separators=(",", ":")).encode()


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
