"""The fleet bus's Redis Streams: their names, the binary codec of a transition entry, the producer helper,
dead-lettering and the trimming policy.

A telemetry entry is one transition in one field, ``v``: a fixed header, then float32 values, then UTF-8
strings (one field, so a consumer parses one value per entry, not eleven):

    header  <B H H B i q H H H H>  codec version, S, A, flags (1 terminated, 2 truncated, 4 the
                                   violation test known, 8 violated), t,
                                   timestamp (int64 microseconds, UTC), bytes of agent_id, eps_id,
                                   model_version, scene
    floats  <f4 * (2S + A + 1)>    obs (S), actions (A), new_obs (S), reward
    strings agent_id, eps_id, model_version, scene

The scene is a warehouse robot's site ("" for lone agents). Entries of codec version 1 (no scene: its header
has one length fewer) decode with scene "".

Trimming (``trim_acknowledged``): producers never trim (``MAXLEN`` on ``XADD`` would drop entries no logger
has read yet). The ingest consumer trims with ``XTRIM MINID ~ floor`` after each flush, where the floor is,
over every consumer group of the stream, the oldest pending entry (or, with none pending, the group's last
delivered entry). So an entry is removed only once every group has acknowledged it. The cost is memory: the
stream holds every entry not yet acknowledged by its slowest group, about 100 bytes of payload plus Redis's
per-entry overhead (~20-30 bytes in listpack nodes) per Nav2D transition, plus up to one node (100 entries)
that approximate trimming keeps. A logger down for an hour at 1,000 transitions/s holds ~0.5 GB: set Redis's
``maxmemory`` with ``noeviction`` so producers get an error instead of Redis evicting data.

Dimensions: ``B`` transitions, ``S`` observation size, ``A`` action size.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from actors.bus_names import BUS, BusNames  # noqa: F401  (BusNames re-exported: the bus names live there)
from worldmodel.data.batch import UNKNOWN, Transitions

TELEMETRY_STREAM = BUS.telemetry
TELEMETRY_DEAD_LETTERS = BUS.telemetry_dead_letters
INGEST_GROUP = BUS.ingest_group
DEAD_LETTER_MAXLEN = 100_000
"""Dead letters kept (approximately): they are for inspection, not replay."""

FIELD = b"v"
CODEC_VERSION = 2
_HEADERS = {1: struct.Struct("<BHHBiqHHH"), 2: struct.Struct("<BHHBiqHHHH")}
"""Each readable codec version's header; ``CODEC_VERSION``'s is written."""
_HEADER = _HEADERS[CODEC_VERSION]
_TERMINATED, _TRUNCATED, _TESTED, _VIOLATED = 1, 2, 4, 8
"""The header's flag bits (``Transitions.violations``: not tested reads as ``UNKNOWN``, as entries written before
the last two bits existed do)."""


def encode_transitions(batch: Transitions) -> list[bytes]:
    """One entry payload per row of ``batch`` (B rows -> B payloads), in the layout above."""
    floats = np.concatenate([batch.obs, batch.actions, batch.new_obs, batch.rewards[:, None]], axis=1)
    floats = np.ascontiguousarray(floats, dtype="<f4")  # (B, 2S + A + 1)
    flags = (batch.terminateds.astype(np.int64) * _TERMINATED + batch.truncateds.astype(np.int64) * _TRUNCATED
             + (batch.violations != UNKNOWN) * _TESTED + (batch.violations == 1) * _VIOLATED)
    micros = batch.timestamp.astype("datetime64[us]").astype(np.int64)
    s, a = batch.obs_dim, batch.act_dim
    payloads = []
    for i, row in enumerate(zip(batch.agent_id, batch.eps_id, batch.model_version, batch.scene)):
        strings = [str(x).encode() for x in row]
        header = _HEADER.pack(CODEC_VERSION, s, a, int(flags[i]), int(batch.t[i]), int(micros[i]),
                              *(len(x) for x in strings))
        payloads.append(b"".join([header, floats[i].tobytes(), *strings]))
    return payloads


def append_transitions(redis: Any, batch: Transitions, stream: str = TELEMETRY_STREAM) -> list[bytes]:
    """Add B transitions to ``stream`` in one pipeline (one round trip); returns their entry ids in order.

    Args:
        redis: a ``redis.Redis`` client.
        batch: B transitions; B == 0 sends nothing.
    """
    if len(batch) == 0:
        return []
    pipe = redis.pipeline(transaction=False)
    for payload in encode_transitions(batch):
        pipe.xadd(stream, {FIELD: payload})
    return pipe.execute()


@dataclass(frozen=True)
class BadEntry:
    """A stream entry that cannot be logged, and why (one line)."""

    entry_id: bytes
    reason: str
    payload: bytes


@dataclass(frozen=True)
class Decoded:
    """The loggable rows of some entries, and the entries that are not."""

    ids: list[bytes]
    """The entry id of each row of ``batch`` (B ids)."""
    batch: Transitions | None
    """B transitions; None when no entry could be decoded."""
    bad: list[BadEntry]
    dims: tuple[int, int] | None
    """(S, A) of the rows: the ``dims`` asked for, or the first good entry's."""


def decode_entries(entries: Iterable[tuple[bytes, dict[bytes, bytes]]], dims: tuple[int, int] | None) -> Decoded:
    """Decode ``XREADGROUP`` entries; wrong layout, wrong (S, A), bad UTF-8 or non-finite values make a BadEntry.

    Args:
        entries: ``(entry id, fields)`` pairs as redis-py returns them.
        dims: the (S, A) every row must have; None adopts the first decodable entry's.
    """
    ids, floats, strings, headers, bad = [], [], [], [], []
    for entry_id, fields in entries:
        raw = fields.get(FIELD) if fields else None
        try:
            head, row_strings = _parse(raw, dims)
        except ValueError as e:
            bad.append(BadEntry(entry_id, str(e), raw if isinstance(raw, bytes) else b""))
            continue
        dims = dims or (head[1], head[2])
        ids.append(entry_id)
        headers.append(head[:6])
        strings.append(row_strings)
        start = _HEADERS[head[0]].size
        floats.append(raw[start:start + 4 * (2 * dims[0] + dims[1] + 1)])
    if not ids:
        return Decoded([], None, bad, dims)
    values = np.frombuffer(b"".join(floats), dtype="<f4").reshape(len(ids), -1)  # (B, 2S + A + 1)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        bad += [BadEntry(ids[i], "non-finite value (NaN or inf) in obs, actions, new_obs or reward", b"")
                for i in np.flatnonzero(~finite)]
        keep = np.flatnonzero(finite)
        ids, values = [ids[i] for i in keep], values[keep]
        headers, strings = [headers[i] for i in keep], [strings[i] for i in keep]
        if not ids:
            return Decoded([], None, bad, dims)
    return Decoded(ids, _batch(values, np.array(headers, dtype=np.int64), strings, dims), bad, dims)


def _parse(raw: object, dims: tuple[int, int] | None) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """One payload's header and strings (agent_id, eps_id, model_version, scene), or ValueError naming what is
    wrong."""
    if not isinstance(raw, bytes) or not raw or raw[0] not in _HEADERS:
        got = raw[0] if isinstance(raw, bytes) and raw else None
        raise ValueError(f"entry has no {FIELD.decode()!r} field of a known codec version ({sorted(_HEADERS)}), "
                         f"got version {got}")
    layout = _HEADERS[raw[0]]
    if len(raw) < layout.size:
        raise ValueError(f"entry has no {FIELD.decode()!r} field of at least {layout.size} bytes")
    head = layout.unpack_from(raw)
    _, s, a, _, t, _, *lengths = head
    if dims is not None and (s, a) != dims:
        raise ValueError(f"(S, A) = ({s}, {a}), expected {dims}")
    if s < 1 or a < 1 or t < 0:
        raise ValueError(f"S={s}, A={a}, t={t}: expected S >= 1, A >= 1, t >= 0")
    start = layout.size + 4 * (2 * s + a + 1)
    if len(raw) != start + sum(lengths):
        raise ValueError(f"payload has {len(raw)} bytes, expected {start + sum(lengths)} for S={s}, A={a}")
    ends = np.cumsum([start, *lengths]).tolist()
    try:
        strings = tuple(raw[lo:hi].decode() for lo, hi in zip(ends[:-1], ends[1:]))
    except UnicodeDecodeError as e:
        raise ValueError(f"a string is not UTF-8 ({e.reason})") from None
    if not strings[0] or not strings[1]:
        raise ValueError("agent_id and eps_id must not be empty")
    return head, strings + ("",) * (4 - len(strings))  # version 1: no scene


def _batch(values: np.ndarray, headers: np.ndarray, strings: list[tuple[str, ...]],
           dims: tuple[int, int]) -> Transitions:
    """Transitions from (B, 2S + A + 1) floats, (B, 6) headers (up to the timestamp) and B string quadruples."""
    s, a = dims
    agent, eps, version, scene = (np.array(column, dtype=object) for column in zip(*strings))
    flags = headers[:, 3]
    return Transitions(obs=values[:, :s], actions=values[:, s:s + a], rewards=values[:, -1].copy(),
                       new_obs=values[:, s + a:2 * s + a], terminateds=(flags & _TERMINATED) > 0,
                       truncateds=(flags & _TRUNCATED) > 0, eps_id=eps, agent_id=agent,
                       t=headers[:, 4].astype(np.int32), model_version=version,
                       timestamp=headers[:, 5].astype("datetime64[us]"), scene=scene,
                       violations=np.where(flags & _TESTED, (flags & _VIOLATED) > 0, UNKNOWN).astype(np.int8))


def dead_letter(pipe: Any, source: str, bad: list[BadEntry], stream: str = TELEMETRY_DEAD_LETTERS) -> None:
    """Queue on ``pipe`` one dead letter per bad entry (the caller acknowledges the originals)."""
    for entry in bad:
        pipe.xadd(stream, {b"stream": source, b"id": entry.entry_id, b"reason": entry.reason,
                           b"payload": entry.payload}, maxlen=DEAD_LETTER_MAXLEN, approximate=True)


def id_key(entry_id: bytes | str) -> tuple[int, int]:
    """A stream id ``b"ms-seq"`` as a tuple that orders like Redis orders ids."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def trim_acknowledged(redis: Any, stream: str) -> int:
    """Trim ``stream`` below what every consumer group still needs (see the module docstring); returns the
    entries removed. A stream without groups is not trimmed: nobody has read it yet."""
    floors = []
    for group in redis.xinfo_groups(stream):
        pending = redis.xpending(stream, group["name"])
        floors.append(pending["min"] if pending["pending"] else _next_id(group["last-delivered-id"]))
    if not floors:
        return 0
    # LIMIT 0: with "~" Redis otherwise removes at most 10,000 entries a call, fewer than a flush acknowledges.
    return redis.xtrim(stream, minid=min(floors, key=id_key), approximate=True, limit=0)


def _next_id(entry_id: bytes | str) -> str:
    ms, seq = id_key(entry_id)
    return f"{ms}-{seq + 1}"
