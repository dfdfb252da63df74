"""The pure per-batch steps of ``serving.engine.PlanEngine``: what a batch of requests becomes, row by row.

Given the batch's requests and their agents' records (None for an agent the server does not know),
these functions decide which requests are retries (``answered``) and which close a transition
(``continuation``), stack what the planner starts from (``stacked``) and the agents' constraints
(``constraints``), turn the planner's answer into the answers (why each action: ``answers``), the new
records and the logged transitions, and find the observations that broke the previous request's
constraints (``observed_violations``). Nothing here calls Ray or keeps state.

Camera agents (a latent model's) send one frame per request and observe nothing else (S = 0): the planner gets
each agent's stack of its last F frames (``frame_stacks``), whose last F-1 its record keeps; their transitions are
not logged here (the vector log has no frame columns) and their plans predict latents, not observations.

Shapes: ``N`` requests in the batch, ``S`` observation, ``A`` action, ``H`` horizon, ``Z`` zones, ``F`` stacked
frames, ``Hi, Wi, C`` frame shape.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Sequence, cast

import numpy as np
import torch

from actors.records import AgentObjective, AgentRecord, PlanAnswer, Rejected, remember_request
from planners.base import Decision
from planners.constraints import KINDS, Constraint, kind_margins
from planners.objectives import ACTION_HIGH, ACTION_LOW, BOX, MAX_SPEED, ZONES
from planners.service import PlanBatch
from serving.schema import Objective, PlanRequest
from worldmodel.data import Transitions
from worldmodel.data.batch import UNKNOWN


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


def warm_starts(records: list[AgentRecord | None], steps: list[Continuation]) -> np.ndarray | None:
    """(N, H, A) each agent's warm start (``stacked``), NaN where the agent's held plan is used up.

    A late call acts on the agent's previous plan shifted (a held plan); after H - 1 held answers in a row it has
    acted on every step of the last plan it got and what is left repeats that plan's last action, a push no plan
    chose for that long. Such an agent has no plan to hold: a late call gives it the fallback's zero action, a
    call in time plans from the box centre."""
    warm = stacked(records, steps, "warm_start")
    if warm is not None:
        warm[[i for i, r in enumerate(records) if used_up(r)]] = np.nan
    return warm


def used_up(record: AgentRecord | None) -> bool:
    """Whether the record's warm start is a held plan the agent has acted out (``warm_starts``)."""
    return record is not None and record.warm_start is not None and record.held >= len(record.warm_start) - 1


def frame_stacks(requests: list[PlanRequest], records: list[AgentRecord | None], steps: list[Continuation],
                 shape: tuple[int, int, int], depth: int) -> np.ndarray:
    """(N, F, Hi, Wi, C) uint8 each camera agent's last F = ``depth`` frames, its request's ``image`` last.

    The earlier F-1 come from its record where the request continues the record's episode and they have the
    shape; otherwise (a new episode, another model's frames) the request's frame is repeated, as at an
    episode's start in training (``worldmodel.latent_training.frame_stacks``).
    """
    now = np.stack([np.frombuffer(r.image, np.uint8).reshape(shape) for r in requests])  # type: ignore[arg-type]
    out = np.repeat(now[:, None], depth, axis=1)  # (N, F, Hi, Wi, C): every agent at its episode's start
    past = (depth - 1, *shape)
    kept = [i for i, (rec, step) in enumerate(zip(records, steps))
            if step.same_episode and rec is not None and rec.frames is not None and rec.frames.shape == past]
    if kept and depth > 1:
        out[kept, :-1] = np.stack([records[i].frames for i in kept])  # type: ignore[union-attr]
    return out


def objectives(requests: list[PlanRequest]) -> list[AgentObjective | None]:
    """Each request's objective as its agent's record keeps it (None: the learned reward, unconstrained)."""
    return [agent_objective(r.objective) for r in requests]


def agent_objective(objective: Objective | None) -> AgentObjective | None:
    """API v1's ``Objective`` as plain tuples (``AgentObjective``); None stays None."""
    if objective is None:
        return None
    box, actions = objective.bounds, objective.action_bounds
    return AgentObjective(name=objective.name, no_fly_zones=tuple(tuple(z) for z in objective.no_fly_zones),
                          bounds=None if box is None else (tuple(box[0]), tuple(box[1])),
                          max_speed=objective.max_speed,
                          action_bounds=None if actions is None else (tuple(actions[0]), tuple(actions[1])))


def constraints(objectives: list[AgentObjective | None]) -> dict[str, np.ndarray]:
    """The N agents' constraints as the planner's params (``planners.objectives`` keys), numpy; a key only
    when some agent has that constraint, the others padded so that they cost nothing.

    ``ZONES`` (N, Z, 3) radius 0 pads; ``BOX`` (N, 2, 2) +-inf; ``MAX_SPEED`` (N,) inf; ``ACTION_LOW`` and
    ``ACTION_HIGH`` (N, A) -inf and +inf (the model's box applies).
    """
    n, out = len(objectives), {}
    given = [o if o is not None else AgentObjective() for o in objectives]
    zone_counts = [len(o.no_fly_zones) for o in given]
    if max(zone_counts, default=0):
        zones = np.zeros((n, max(zone_counts), 3), np.float32)  # radius 0 pads
        for i, o in enumerate(given):
            if o.no_fly_zones:
                zones[i, :zone_counts[i]] = o.no_fly_zones
        out[ZONES] = zones
    if any(o.bounds is not None for o in given):
        box = np.tile(np.array([[-np.inf, -np.inf], [np.inf, np.inf]], np.float32), (n, 1, 1))
        rows = [i for i, o in enumerate(given) if o.bounds is not None]
        box[rows] = [given[i].bounds for i in rows]
        out[BOX] = box
    if any(o.max_speed is not None for o in given):
        out[MAX_SPEED] = np.array([np.inf if o.max_speed is None else o.max_speed for o in given], np.float32)
    bounded = [i for i, o in enumerate(given) if o.action_bounds is not None]
    if bounded:
        act_dim = len(given[bounded[0]].action_bounds[0])  # type: ignore[index]
        low, high = np.full((n, act_dim), -np.inf, np.float32), np.full((n, act_dim), np.inf, np.float32)
        low[bounded] = [given[i].action_bounds[0] for i in bounded]  # type: ignore[index]
        high[bounded] = [given[i].action_bounds[1] for i in bounded]  # type: ignore[index]
        out[ACTION_LOW], out[ACTION_HIGH] = low, high
    return out


def answers(requests: list[PlanRequest], batch: PlanBatch, warm_start: np.ndarray | None) -> list[PlanAnswer]:
    """Each request's answer from its row of the planner's batch (the trajectory only when asked for): the
    action and why (``decision``, the fallback's reason and source, the shield's constraint, the margin, the
    reward model that scored the plan). ``warm_start``: the (N, H, A) plans the planner was given (``warm_starts``),
    None for none: a late call of a planner that holds plans acted with the zero action where it had none to hold
    (a NaN row), and says so."""
    reasons, by = batch.reasons(), batch.fallback_by()
    n = len(requests)
    none = np.ones(n, bool) if warm_start is None else np.isnan(warm_start).reshape(n, -1).any(1)
    by = ["zero" if source == "plan" and none[i] else source for i, source in enumerate(by)]
    margins = [m if np.isfinite(m) else None for m in batch.margin.tolist()]
    rewards = batch.reward_models or [None] * len(requests)
    return [PlanAnswer(action=batch.actions[i].tolist(), model_version=batch.model_version,
                       plan_id=uuid.uuid4().hex, disagreement=float(batch.disagreement[i]),
                       fallback=reasons[i] is not None, fallback_reason=reasons[i],
                       decision=Decision(int(batch.decision[i])).label,
                       shielded_constraint=Constraint(int(batch.shield[i])).reason,
                       fallback_action_by=by[i], margin=margins[i],
                       trajectory=batch.trajectory[i].tolist() if req.return_trajectory else None,
                       reward_model=rewards[i])
            for i, req in enumerate(requests)]


def observed_violations(flags: np.ndarray) -> Counter[str]:
    """Agents whose new observation violates the constraints their previous request gave, by constraint
    ('no_fly_zone', 'state_box', 'speed'), from their (N, 3) ``violation_flags``."""
    counts = flags.sum(0).tolist()
    return Counter({kind.reason: int(count) for kind, count in zip(KINDS, counts) if count})


def violation_flags(records: Sequence[AgentRecord | None], steps: Sequence[Continuation],
                    obs: np.ndarray) -> np.ndarray:
    """(N, 3) bool in ``KINDS`` order: the agent's new (N, S) observation breaks that kind of constraint its
    previous request gave (only steps that continue their record's episode; the others all False)."""
    out = np.zeros((len(records), len(KINDS)), bool)
    rows = [i for i, (rec, step) in enumerate(zip(records, steps))
            if step.same_episode and rec is not None and rec.objective is not None and rec.objective.constrained]
    if rows:
        params = {k: torch.from_numpy(v) for k, v in constraints([records[i].objective for i in rows]).items()
                  if k in (ZONES, BOX, MAX_SPEED)}  # type: ignore[union-attr]
        states = torch.from_numpy(np.ascontiguousarray(obs[rows], np.float32))[None, :, None]  # (1, n, 1, S)
        out[rows] = (kind_margins(states, params) < 0)[0, :, 0].numpy()
    return out


def agent_mse(records: Sequence[AgentRecord | None], steps: Sequence[Continuation],
              obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices, MSEs) of the agents whose step scores their record's prediction of their (N, S) observation:
    the mean over the dims it predicted (NaN in ``predicted`` left out), for steps continuing the episode."""
    scored = [i for i, (rec, step) in enumerate(zip(records, steps))
              if step.same_episode and rec is not None and rec.predicted is not None
              and np.isfinite(rec.predicted).any()]
    if not scored:
        return np.zeros(0, np.int64), np.zeros(0)
    predicted = np.stack([records[i].predicted for i in scored])  # type: ignore[union-attr]  # (n, S)
    return np.asarray(scored), np.nanmean((obs[scored] - predicted) ** 2, axis=1)


def new_records(requests: list[PlanRequest], records: list[AgentRecord | None], steps: list[Continuation],
                obs: np.ndarray, batch: PlanBatch, answered: list[PlanAnswer],
                goals: list[AgentObjective | None], stacks: np.ndarray | None = None) -> list[AgentRecord]:
    """Each agent's new record; after an episode's last observation it keeps no observation or plan.

    Args:
        requests, records, steps: the N requests, their agents' records and ``continuation`` of each.
        obs: (N, S) the requests' observations.
        batch: the planner's answer for them; ``answered``: the N answers built from it.
        goals: the N requests' ``objectives``.
        stacks: camera agents' (N, F, Hi, Wi, C) frame stacks (``frame_stacks``): the last F-1 are kept; their
            predictions are latents, which no observation is scored against, so none is kept.
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
                hidden=None if batch.hidden is None else batch.hidden[i].copy(), objective=goals[i])
            if stacks is not None:
                record = dataclasses.replace(record, predicted=None, frames=stacks[i, 1:].copy())
            if answered[i].fallback_action_by == "plan":
                record = dataclasses.replace(record, held=(same.held if same is not None else 0) + 1)
        out.append(record)
    return out


def transitions(requests: list[PlanRequest], records: list[AgentRecord | None], steps: list[Continuation],
                obs: np.ndarray, flags: np.ndarray) -> Transitions | None:
    """The transitions these requests close, in the log schema (None when none closes); ``obs``: (N, S), ``flags``
    their (N, 3) ``violation_flags``.

    A warehouse robot's rows carry its site as their ``scene``, so the learners rebuild each tick of a site."""
    closing = [i for i, step in enumerate(steps) if step.action is not None]
    if not closing or obs.shape[1] == 0:  # camera agents: their frames are not in the vector log
        return None
    prev = cast(list[AgentRecord], [records[i] for i in closing])  # a transition closes only from a record
    acted = np.stack(cast(list[np.ndarray], [steps[i].action for i in closing]))  # (B, A)
    # A version "acted" only when the agent executed its answer; an action of the client's own is no model's.
    answered = np.stack([r.action if r.action is not None and r.action.shape == acted.shape[1:]
                         else np.full(acted.shape[1:], np.nan, np.float32) for r in prev])  # (B, A)
    executed = np.isclose(acted, answered, rtol=1e-5, atol=1e-6).all(axis=1)
    versions = np.where(executed, np.array([r.model_version for r in prev]), "")
    # The constraints the agent's previous request gave, tested at its new observation (none given: none broken);
    # a warehouse robot's contacts are not tested here: unknown.
    violated = flags[closing].any(axis=1).astype(np.int8)
    violated[[requests[i].site is not None for i in closing]] = UNKNOWN
    return Transitions.build(
        obs=np.stack([r.obs for r in prev]), actions=acted,
        rewards=np.array([requests[i].reward for i in closing]), new_obs=obs[closing],
        terminateds=np.array([requests[i].terminated for i in closing]),
        truncateds=np.array([requests[i].truncated for i in closing]),
        eps_id=[r.eps_id for r in prev], agent_id=[r.agent_id for r in prev],
        t=np.array([r.t for r in prev]), model_version=versions,
        scene=[requests[i].site or "" for i in closing],  # a warehouse tick is (site, t): who was near whom
        violations=violated)


def prediction_errors(records: list[AgentRecord | None], steps: list[Continuation],
                      obs: np.ndarray) -> list[tuple[str, float]]:
    """(model version, one-step prediction error) of each agent whose step continues its episode; ``obs``: (N, S).

    Dims the model did not predict (NaN in ``predicted``: a warehouse robot's slots and task) are not scored."""
    return [(rec.model_version, float(np.sqrt(np.nansum((obs[i] - rec.predicted) ** 2))))
            for i, (rec, step) in enumerate(zip(records, steps))
            if step.same_episode and rec is not None and rec.predicted is not None]
