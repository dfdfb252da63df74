"""The typed records of the serving path: an agent's state, a served answer, a refusal, their columns,
and an ingress's own copy of the records it wrote (``RecordCache``).

One module spells them, with the log schema's and the API's names: ``warm_start``, ``disagreement``,
``new_obs``, ``fallback_reason``. An ``AgentRecord`` is what the next request of its agent needs; the
shards keep one per agent. Records cross between processes as ``AgentRecords`` (one column per field),
because Ray serializes every numpy array as a buffer of its own: for a record's few small arrays that
is most of a call's cost (measured: 500 us for 32 agent records sent one by one, 40 us as columns).

Shapes: ``S`` observation, ``A`` action, ``H`` horizon, ``Hd`` a recurrent model's hidden state, ``F`` frames a
camera model stacks, ``Hi, Wi, C`` its frame shape.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

REQUEST_IDS_KEPT = 8
"""Request ids remembered per agent: a retry of one of them that is not the last is refused (409)."""


@dataclass(frozen=True)
class PlanAnswer:
    """One served answer: exactly the fields of API v1's ``PlanResponse``."""

    action: list[float]
    """(A,) the action to take now."""
    model_version: str
    """The model version that planned it."""
    plan_id: str
    """Unique id of this decision."""
    disagreement: float
    """Mean ensemble disagreement along the chosen plan."""
    fallback: bool
    """The fallback policy acted instead of the plan."""
    fallback_reason: str | None
    """Why it did: 'deadline', 'uncertainty' or 'error'; None when the plan acted."""
    decision: str = "planned"
    """Why this action: 'planned', 'fallback', 'shielded' (the shield replaced the plan's or the fallback's
    action) or 'policy' (a policy-only request)."""
    shielded_constraint: str | None = None
    """The constraint the shield kept the action from violating: 'no_fly_zone', 'state_box' or 'speed'."""
    fallback_action_by: str | None = None
    """What produced the fallback's action: 'policy', 'zero', 'brake' or 'plan' (``PlanBatch.fallback_by``); None
    when the fallback did not act."""
    margin: float | None = None
    """Worst predicted constraint margin of the action (negative: a predicted violation); None without constraints."""
    trajectory: list[list[float]] | None = None
    """(H+1, S) predicted states along the plan, when the request asked for it."""
    replayed: bool = False
    """A retry answered from the first answer, not planned again."""
    explanation: dict[str, Any] | None = None
    """The decision's explanation (``/v1/explain``'s JSON body), when the request asked for it; never kept in
    the agent's record (a retry asking for it is explained again)."""
    reward_model: str | None = None
    """The reward model version that scored the plan; None when the world model's own reward did (or none did)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of ``PlanResponse``: its fields, not copies (``asdict`` would copy every list, per agent,
        for a body that is only encoded)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def replay(self) -> "PlanAnswer":
        """This answer, as given again to a retry of its request."""
        return dataclasses.replace(self, replayed=True)


@dataclass(frozen=True)
class Rejected:
    """A request refused without planning or logging anything: the HTTP status and its one-line error."""

    status: int
    error: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": self.error}


@dataclass(frozen=True)
class AgentObjective:
    """A request's objective as the agent record keeps it: API v1's ``Objective`` fields, plain tuples.

    Plain Python values, no arrays: records travel as columns, and Ray would send every small array
    inside them as a buffer of its own.
    """

    name: str = "learned"
    """'learned' or 'goal'."""
    no_fly_zones: tuple[tuple[float, float, float], ...] = ()
    """(Z, 3) discs (x, y, r) the position must stay out of."""
    bounds: tuple[tuple[float, float], tuple[float, float]] | None = None
    """((xlo, ylo), (xhi, yhi)) the box the position must stay in; None: no box."""
    max_speed: float | None = None
    """Largest allowed speed; None: no limit."""
    action_bounds: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    """((A,) low, (A,) high) per-agent action bounds inside the model's action box; None: the model's box."""

    @property
    def constrained(self) -> bool:
        """Some constraint on the states applies (zones, box or speed limit)."""
        return bool(self.no_fly_zones) or self.bounds is not None or self.max_speed is not None


@dataclass(frozen=True)
class AgentRecord:
    """One agent's state between its requests, as the state shards keep it.

    ``obs`` is None after an episode's last observation (terminated or truncated): the agent's next
    request starts a new episode and closes no transition.
    """

    agent_id: str
    eps_id: str
    """The logged episode the agent is in (a gap in its steps starts a new one)."""
    t: int
    """The agent's step index of ``obs`` in its episode (the request's ``t`` when it gave one)."""
    model_version: str
    """The model version that planned ``action``."""
    updated: float
    """Wall-clock time (s since the epoch) of the last write: agents idle past the TTL are evicted."""
    request_ids: tuple[str | None, ...]
    """The ids of the agent's last requests (at most ``REQUEST_IDS_KEPT``), newest last; ``answer``
    answers the newest."""
    answer: PlanAnswer | None
    """The answer to the newest request, given again to its retries."""
    obs: np.ndarray | None = None
    """(S,) the last observation; None once the episode ended."""
    action: np.ndarray | None = None
    """(A,) the server's answer to ``obs``."""
    warm_start: np.ndarray | None = None
    """(H, A) the last plan shifted by one step."""
    hidden: np.ndarray | None = None
    """(E*Hd,) a recurrent model's state (every member's) after ``obs`` and ``action``; None for feed-forward models."""
    predicted: np.ndarray | None = None
    """(S,) the model's prediction of the next observation (its one-step error is a metric)."""
    objective: AgentObjective | None = None
    """What ``obs`` was planned for: the next request's observation is checked against its constraints (an
    observed violation) and ``/v1/explain`` of the agent's current state plans for it. None: the learned reward."""
    frames: np.ndarray | None = None
    """(F-1, Hi, Wi, C) uint8 a camera agent's last frames, oldest first, its current one last: with the next
    request's frame they make the planner's stack. None for vector agents."""
    held: int = 0
    """Answers in a row, up to this one, that acted on a held plan (a late call's previous plan:
    ``fallback_action_by`` 'plan'); ``serving.rows.warm_starts`` ends a held plan once it is used up."""

    @property
    def continuing(self) -> bool:
        """The episode goes on: the next observation may close a transition from ``obs``."""
        return self.obs is not None

    @property
    def last_request_id(self) -> str | None:
        return self.request_ids[-1] if self.request_ids else None


ARRAY_FIELDS = ("obs", "action", "warm_start", "hidden", "predicted", "frames")
"""``AgentRecord``'s numpy fields: stacked into one array per batch where every record has one of one shape."""

Column = np.ndarray | list[Any]
"""A column of B values: one stacked array, or a list (plain values, or arrays that cannot be stacked)."""


@dataclass(frozen=True)
class AgentRecords:
    """B agent records as columns, the form in which a batch of them travels in one Ray call.

    Every field of ``AgentRecord`` is a column of B values; an array field is one (B, ...) array when
    every record has an array of one shape and dtype there, else a list of per-record values.
    """

    columns: dict[str, Column]

    def __post_init__(self) -> None:
        names = [f.name for f in dataclasses.fields(AgentRecord)]
        if sorted(self.columns) != sorted(names):
            raise ValueError(f"AgentRecords columns must be {names}, got {sorted(self.columns)}")
        lengths = {name: len(col) for name, col in self.columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"AgentRecords columns must have one length, got {lengths}")

    def __len__(self) -> int:
        return len(self.columns["agent_id"])

    @classmethod
    def pack(cls, records: Sequence[AgentRecord]) -> "AgentRecords":
        """The records as columns."""
        columns: dict[str, Column] = {}
        for f in dataclasses.fields(AgentRecord):
            values = [getattr(r, f.name) for r in records]
            columns[f.name] = _stacked(values) if f.name in ARRAY_FIELDS else values
        return cls(columns)

    def unpack(self) -> list[AgentRecord]:
        """The records; each array a copy of its row, so that no kept record keeps the whole batch alive."""
        cols = self.columns
        stacked = {k for k in ARRAY_FIELDS if isinstance(cols[k], np.ndarray)}
        return [AgentRecord(**{k: (v[i].copy() if k in stacked else v[i]) for k, v in cols.items()})
                for i in range(len(self))]


def _stacked(values: list[Any]) -> Column:
    """One (B, ...) array when every value is an array of one shape and dtype, else the list as it is."""
    first = values[0] if values else None
    if isinstance(first, np.ndarray) and all(
            isinstance(v, np.ndarray) and v.shape == first.shape and v.dtype == first.dtype for v in values):
        return np.stack(values)
    return list(values)


def remember_request(request_ids: tuple[str | None, ...], request_id: str | None) -> tuple[str | None, ...]:
    """``request_ids`` with ``request_id`` appended as the newest, the oldest dropped past ``REQUEST_IDS_KEPT``."""
    return (*request_ids, request_id)[-REQUEST_IDS_KEPT:]


class RecordCache:
    """The records this ingress replica wrote, so the next batch of the same agents reads none from the shards.

    Under load a read from the shards waits its turn for CPU in two more processes, and it was a
    third of each cycle. This copy is exact only while this replica is the one writer of its agents'
    records: ``serving.engine.PlanEngine`` uses it only while its writer lease in the shards says so, and empties it
    as soon as a renewal finds another live writer (another replica, or an old and a new one side by
    side during a redeploy); the records another writer wrote before that renewal may be read stale
    for at most the engine's lease renewal period. The shards stay the durable copy, written every batch; a restarted
    replica starts empty and reads them. Agents idle for ``ttl_s`` (the shards' eviction age) are
    dropped here too.
    """

    SWEEP_S = 60.0
    """Seconds between scans for idle agents."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.records: dict[str, AgentRecord] = {}
        self._swept = time.monotonic()

    def get(self, agent_ids: list[str]) -> list[AgentRecord | None]:
        """The records of ``agent_ids``, None for those not here or idle past the TTL (as the shards evict)."""
        cutoff = time.time() - self.ttl_s
        found = [self.records.get(a) for a in agent_ids]
        return [r if r is not None and r.updated >= cutoff else None for r in found]

    def put(self, records: list[AgentRecord]) -> None:
        self.records.update((r.agent_id, r) for r in records)
        if time.monotonic() - self._swept > self.SWEEP_S:  # the memory of agents that went away
            self._swept = time.monotonic()
            cutoff = time.time() - self.ttl_s
            for agent in [a for a, r in self.records.items() if r.updated < cutoff]:
                del self.records[agent]

    def drop(self, agent_ids: list[str]) -> int:
        """Forget agents; returns how many were here."""
        return sum(self.records.pop(a, None) is not None for a in agent_ids)

    def clear(self) -> None:
        self.records.clear()
