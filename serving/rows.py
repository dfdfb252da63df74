"""The pure per-batch steps of ``serving.engine.PlanEngine``: what a batch of requests becomes, row by row.

Given the batch's requests and their agents' records (None for an agent the server does not know),
these functions decide which requests are retries (``answered``) and which close a transition
(``continuation``), stack what the planner starts from (``stacked``, ``zones``), and turn the
planner's answer into the answers, the new records and the logged transitions. Nothing here calls
Ray or keeps state.

Shapes: ``N`` requests in the batch, ``S`` observation, ``A`` action, ``H`` horizon, ``Z`` zones.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import cast

import numpy as np

from actors.records import AgentRecord, PlanAnswer, Rejected, remember_request
from planners.service import PlanBatch
from serving.schema import PlanRequest
from worldmodel.data import Transitions


def answered(req: PlanRequest, rec: AgentRecord | None) -> PlanAnswer | Rejected | None:
    """A retry's answer (replayed), a refusal (409: an older request of the agent), or None when the
    request is to be planned. Neither plans nor logs anything."""
    if rec is None or req.request_id is None:
        return None
    if req.request_id == rec.last_request_id and rec.answer is not None:
        return rec.answer.replay()
    if req.request_id in rec.request_ids:
        later = repr(rec.last_request_id) if rec.last_request_id is not None else "a later request"
        return Rejected(409, f"request_id {req.request_id!r} for agent {req.agent_id!r} was already answered "
                             f"and superseded by {later}")
    return None


UNLOGGED_REASONS = ("no_prev_action", "no_reward", "gap", "restart", "shape")
"""Why a request left its record's transition unlogged (``Continuation.unlogged``): the client sent no
``prev_action`` or no ``reward``; its ``t`` skipped steps (``gap``) or restarted at 0 without ending the
episode (``restart``); or the record's observation or action has another size (another model's record)."""


@dataclass(frozen=True)
class Continuation:
    """How a request relates to its agent's record (``continuation``)."""

    same_episode: bool
    """The request continues the record's logged episode."""
    action: np.ndarray | None
    """(A,) the action taken between the record's observation and this one, when a transition closes."""
    unlogged: str | None = None
    """One of ``UNLOGGED_REASONS`` when the record's episode was going on and no transition closes."""


def continuation(req: PlanRequest, rec: AgentRecord | None) -> Continuation:
    """Whether ``req`` continues its record's episode, and the action that closes a transition.

    A transition closes only when the server knows both ends and the action the agent took: the
    record's episode goes on, the request is its next step (``t == rec.t + 1``, or no ``t`` given),
    reports a reward and ``prev_action``. Without ``prev_action`` (or ``reward``) the episode goes on
    unlogged for this step. A step the server never saw (``t`` not ``rec.t + 1``) breaks the episode,
    and so does a record of another observation or action size (left by another model).
    """
    if rec is None or not rec.continuing:
        return Continuation(False, None)
    if req.t is not None and req.t != rec.t + 1:
        return Continuation(False, None, "restart" if req.t == 0 else "gap")
    if not _same_sizes(req, rec):
        return Continuation(False, None, "shape")
    if req.reward is None:
        return Continuation(True, None, "no_reward")
    if req.prev_action is None:
        return Continuation(True, None, "no_prev_action")
    return Continuation(True, np.asarray(req.prev_action, np.float32))


def _same_sizes(req: PlanRequest, rec: AgentRecord) -> bool:
    """The record's observation (and action, when the request reports one) have the request's sizes."""
    if rec.obs is None or rec.obs.shape != (len(req.observation),):
        return False
    return req.prev_action is None or rec.action is None or rec.action.shape == (len(req.prev_action),)


def unlogged(steps: list[Continuation]) -> Counter[str]:
    """How many of ``steps`` left a transition unlogged, by reason."""
    return Counter(s.unlogged for s in steps if s.unlogged is not None)


def stacked(records: list[AgentRecord | None], steps: list[Continuation], name: str) -> np.ndarray | None:
    """Per-agent arrays of field ``name`` stacked (N, ...), for the planner to start from.

    A row is NaN where the agent has none, or its request starts a new episode (a plan or hidden state of
    the last episode is no start for this one), or its array has another shape than most rows' (a record
    left by another horizon or model). None when no row has one.
    """
    arrays = [getattr(r, name) if r is not None and s.same_episode else None for r, s in zip(records, steps)]
    shapes = Counter(x.shape for x in arrays if x is not None)
    if not shapes:
        return None
    shape = shapes.most_common(1)[0][0]
    return np.stack([x if x is not None and x.shape == shape else np.full(shape, np.nan, np.float32)
                     for x in arrays])


def zones(requests: list[PlanRequest]) -> np.ndarray | None:
    """(N, Z, 3) each request's no-fly zones (x, y, r), padded with radius 0; None when no request has one."""
    counts = [len(r.objective.no_fly_zones) if r.objective else 0 for r in requests]
    if max(counts) == 0:
        return None
    out = np.zeros((len(requests), max(counts), 3), np.float32)  # radius 0 pads
    for i, r in enumerate(requests):
        if counts[i]:
            out[i, :counts[i]] = np.asarray(r.objective.no_fly_zones, np.float32)  # type: ignore[union-attr]
    return out


def answers(requests: list[PlanRequest], batch: PlanBatch) -> list[PlanAnswer]:
    """Each request's answer from its row of the planner's batch (the trajectory only when asked for)."""
    reasons = batch.reasons()
    return [PlanAnswer(action=batch.actions[i].tolist(), model_version=batch.model_version,
                       plan_id=uuid.uuid4().hex, disagreement=float(batch.disagreement[i]),
                       fallback=reasons[i] is not None, fallback_reason=reasons[i],
                       trajectory=batch.trajectory[i].tolist() if req.return_trajectory else None)
            for i, req in enumerate(requests)]


def new_records(requests: list[PlanRequest], records: list[AgentRecord | None], steps: list[Continuation],
                obs: np.ndarray, batch: PlanBatch, answered: list[PlanAnswer]) -> list[AgentRecord]:
    """Each agent's new record; after an episode's last observation it keeps no observation or plan.

    Args:
        requests, records, steps: the N requests, their agents' records and ``continuation`` of each.
        obs: (N, S) the requests' observations.
        batch: the planner's answer for them; ``answered``: the N answers built from it.
    """
    now, out = time.time(), []
    for i, (req, rec, step) in enumerate(zip(requests, records, steps)):
        same = rec if step.same_episode else None
        t = req.t if req.t is not None else (same.t + 1 if same is not None else 0)
        eps_id = same.eps_id if same is not None else f"{req.agent_id}-{uuid.uuid4().hex[:12]}"
        record = AgentRecord(agent_id=req.agent_id, eps_id=eps_id, t=t, model_version=batch.model_version,
                             updated=now, request_ids=remember_request(rec.request_ids if rec else (),
                                                                       req.request_id), answer=answered[i])
        if not (req.terminated or req.truncated):
            # Copies of the batch's rows: a kept record must not keep its whole batch alive.
            record = dataclasses.replace(
                record, obs=obs[i].copy(), action=batch.actions[i].copy(),
                warm_start=batch.warm_start[i].copy(), predicted=batch.trajectory[i, 1].copy(),
                hidden=None if batch.hidden is None else batch.hidden[i].copy())
        out.append(record)
    return out


def transitions(requests: list[PlanRequest], records: list[AgentRecord | None], steps: list[Continuation],
                obs: np.ndarray) -> Transitions | None:
    """The transitions these requests close, in the log schema (None when none closes); ``obs``: (N, S)."""
    closing = [i for i, step in enumerate(steps) if step.action is not None]
    if not closing:
        return None
    prev = cast(list[AgentRecord], [records[i] for i in closing])  # a transition closes only from a record
    acted = cast(list[np.ndarray], [steps[i].action for i in closing])
    # A version "acted" only when the agent executed its answer; an action of the client's own is no model's.
    versions = [r.model_version if r.action is not None and r.action.shape == a.shape
                and np.allclose(a, r.action, atol=1e-6) else ""
                for r, a in zip(prev, acted)]
    return Transitions.build(
        obs=np.stack([r.obs for r in prev]), actions=np.stack(acted),  # type: ignore[misc]
        rewards=np.array([requests[i].reward for i in closing]), new_obs=obs[closing],
        terminateds=np.array([requests[i].terminated for i in closing]),
        truncateds=np.array([requests[i].truncated for i in closing]),
        eps_id=[r.eps_id for r in prev], agent_id=[r.agent_id for r in prev],
        t=np.array([r.t for r in prev]), model_version=versions)


def prediction_errors(records: list[AgentRecord | None], steps: list[Continuation],
                      obs: np.ndarray) -> list[tuple[str, float]]:
    """(model version, one-step prediction error) of each agent whose step continues its episode; ``obs``: (N, S)."""
    return [(rec.model_version, float(np.linalg.norm(obs[i] - rec.predicted)))
            for i, (rec, step) in enumerate(zip(records, steps))
            if step.same_episode and rec is not None and rec.predicted is not None]
