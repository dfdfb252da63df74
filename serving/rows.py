"""The pure per-batch steps of ``serving.engine.PlanEngine``: what a batch of requests becomes, row by row.

Given the batch's requests and their agents' records (None for an agent the server does not know),
these functions decide which requests close a transition (``continuation``), stack what the
planner needs (``stacked``, ``zones``), and turn the planner's answer into the answers, the new
records and the logged transitions. Nothing here calls Ray or keeps state.

Shapes: ``N`` requests in the batch, ``S`` observation, ``A`` action, ``H`` horizon, ``Z`` zones.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass
from typing import cast

import numpy as np

from actors.records import AgentRecord, PlanAnswer, remember_request
from planners.service import PlanBatch
from serving.schema import PlanRequest
from worldmodel.data import Transitions


@dataclass(frozen=True)
class Continuation:
    """How a request relates to its agent's record (``continuation``)."""

    same_episode: bool
    """The request continues the record's logged episode."""
    action: np.ndarray | None
    """(A,) the action taken between the record's observation and this one, when a transition closes."""


def continuation(req: PlanRequest, rec: AgentRecord | None) -> Continuation:
    """Whether ``req`` continues its record's episode, and the action that closes a transition.

    A transition is closed only when the server knows both ends and the action: the record's
    episode goes on, the request is its next step (``t == rec.t + 1``, or no ``t`` given) and
    reports a reward; the action is ``prev_action`` when given, else the server's last answer.
    A step the server never saw (``t`` not ``rec.t + 1``) breaks the episode.
    """
    if rec is None or not rec.continuing or (req.t is not None and req.t != rec.t + 1):
        return Continuation(False, None)
    if req.reward is None:
        return Continuation(True, None)
    action = rec.action if req.prev_action is None else np.asarray(req.prev_action, np.float32)
    return Continuation(True, action)


def stacked(records: list[AgentRecord | None], name: str) -> np.ndarray | None:
    """Per-agent arrays of field ``name`` stacked (N, ...), NaN rows where an agent has none; None when
    nobody has one, or their shapes differ (the horizon or model changed between versions)."""
    arrays = [getattr(r, name) if r is not None else None for r in records]
    shapes = {x.shape for x in arrays if x is not None}
    if len(shapes) != 1:
        return None
    shape = shapes.pop()
    return np.stack([x if x is not None else np.full(shape, np.nan, np.float32) for x in arrays])


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
    versions = [r.model_version if r.action is not None and np.allclose(a, r.action, atol=1e-6) else ""
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
