"""``POST /v1/explain``: why an agent's action, from the inputs of the decision that took it.

An explanation (``planners.explain.Explanation``, computed by the planner deployment) shows for one
agent the chosen plan and its counterfactuals: the best alternatives the planner scored, the
fallback's action and the caller's proposals, each with its predicted trajectory, return,
disagreement and constraint margins. It explains one of:

- a served decision (``plan_id``), from that decision's own inputs (observation, objective, warm
  start). The engine that served it keeps them in a ``DecisionStore``: for ``EXPLAIN_TTL_S``, the
  agent's last ``DECISIONS_PER_AGENT``. In memory, not in the agent's record: records go to the state
  shards every batch, and the inputs of 64 decisions would make every write tens of times larger for
  a lookup that is an operator's audit, not the control path. So a decision is found through the
  engine that served it: the HTTP ingress's (with one ingress replica, the default, every HTTP
  decision); a fleet-bus decision is explained in its own reply (below);
- the agent's current state: its record's last observation, objective and warm start, or an
  observation and objective the caller gives.

The fleet bus's equivalent is a field of the plan request, ``explain: true`` (or ``{"proposals": [...]}``):
its reply carries ``explanation``, this route's body for the decision just served, so a gateway asks
on the stream it already uses and reads the answer where it already reads.

Shapes: ``S`` observation, ``A`` action, ``H`` horizon, ``M`` proposals.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from actors.records import AgentObjective, AgentRecord, PlanAnswer, Rejected
from serving import rows
from serving.schema import (MAX_OBS_DIM, MAX_PROPOSALS, PLAN_ID_PATTERN, AgentId, Finite, Objective, PlanRequest,
                            Proposal, one_form)
from serving.served_checks import check_objective, check_proposals

logger = logging.getLogger("ray.serve")

EXPLAIN_TTL_S = 600.0
"""A served decision can be explained by its ``plan_id`` for this long."""
DECISIONS_PER_AGENT = 64
"""Served decisions kept per agent (its newest)."""
MAX_DECISIONS = 65_536
"""Served decisions kept in all (the oldest go first): bounds an engine's memory (about 50 MB)."""
SERVED_FIELDS = ("action", "model_version", "decision", "fallback_reason", "fallback_action_by",
                 "shielded_constraint", "margin", "disagreement")
"""The served answer's fields an explanation of its ``plan_id`` repeats under ``served``."""


class ExplainRequest(BaseModel):
    """Why an agent's action: a served decision (``plan_id``), or the agent's current state, or a given one."""

    model_config = ConfigDict(extra="forbid")
    agent_id: AgentId
    plan_id: str | None = Field(
        default=None, pattern=PLAN_ID_PATTERN,
        description="A decision served to the agent in the last 600 s (its last 64): explained from its own inputs "
                    "(observation, objective, warm start). Without it: the agent's current state.")
    observation: list[Finite] | None = Field(
        default=None, min_length=1, max_length=MAX_OBS_DIM,
        description="Explain a decision from this observation instead of the agent's last one (not with plan_id).")
    objective: Objective | None = Field(
        default=None, description="Plan for this objective instead of the agent's last one (not with plan_id).")
    proposals: list[Proposal] = Field(
        default_factory=list, max_length=MAX_PROPOSALS,
        description="Actions to compare with the decision: each an action (held for the horizon) or an (H, A) "
                    "sequence of the served horizon; all of one form.")

    @field_validator("proposals")
    @classmethod
    def _one_form(cls, proposals: list[Any]) -> list[Any]:
        return one_form(proposals)

    @model_validator(mode="after")
    def _consistent(self) -> "ExplainRequest":
        if self.plan_id is not None and (self.observation is not None or self.objective is not None):
            raise ValueError("plan_id: a served decision is explained from its own inputs; give plan_id, or "
                             "observation and objective, not both")
        return self


class ExplainResponse(BaseModel):
    """An explanation: the chosen plan and its counterfactuals (``planners.explain.Explanation``'s fields: each
    with its predicted trajectory, return, disagreement and constraint margins), and what it explains."""

    model_config = ConfigDict(extra="allow")
    agent_id: str = Field(description="The agent.")
    plan_id: str | None = Field(description="The served decision explained; null for the agent's current state or "
                                            "a given observation.")
    model_version: str = Field(description="The model version that explains (it plans again from the inputs).")
    reward_model: str | None = Field(default=None, description="The registered reward model the learned objective "
                                     "scored with (the served decision's, else the fleet's); absent: the model's own.")
    served: dict[str, Any] | None = Field(
        default=None, description="With plan_id: the served answer (action, model_version, decision, "
                                  "fallback_reason, fallback_action_by, shielded_constraint, margin, disagreement).")


def check_explain(req: ExplainRequest, spec: dict[str, Any]) -> str | None:
    """``serving.served_checks.check_request``'s checks of an explain request's observation, objective and proposals."""
    if req.observation is not None and spec.get("image_shape") is not None:
        return f"observation: model {spec['model_version']} plans from camera frames; explain a served plan_id " \
               "or the agent's current state (its last frames)"
    if req.observation is not None and len(req.observation) != spec["obs_dim"]:
        return f"observation: has {len(req.observation)} values, model {spec['model_version']} " \
               f"({spec['env_id']}) expects {spec['obs_dim']}"
    return check_objective(req.objective, spec, "") or check_proposals(req.proposals, spec, "")


@dataclass(frozen=True)
class Served:
    """One served decision as ``DecisionStore`` keeps it: its inputs and its answer."""

    agent_id: str
    at: float
    """When it was served (``time.monotonic``)."""
    obs: np.ndarray
    """(S,) the observation it was planned from."""
    warm_start: np.ndarray | None
    """(H, A) the plan it started from; None when it started cold."""
    objective: AgentObjective | None
    """What it was planned for (None: the learned reward)."""
    answer: PlanAnswer


class DecisionStore:
    """The served decisions of one engine by ``plan_id``: each agent's last ``per_agent``, none older than
    ``ttl_s``, at most ``max_total`` in all."""

    def __init__(self, ttl_s: float = EXPLAIN_TTL_S, per_agent: int = DECISIONS_PER_AGENT,
                 max_total: int = MAX_DECISIONS) -> None:
        self.ttl_s, self.per_agent, self.max_total = ttl_s, per_agent, max_total
        self._by_id: OrderedDict[str, Served] = OrderedDict()  # oldest first
        self._by_agent: dict[str, deque[str]] = {}  # each agent's plan ids, oldest first

    def __len__(self) -> int:
        return len(self._by_id)

    def put(self, decisions: list[Served]) -> None:
        """Keep ``decisions`` (served now, in order), dropping what they push out."""
        for d in decisions:
            self._by_id[d.answer.plan_id] = d
            ids = self._by_agent.setdefault(d.agent_id, deque())
            ids.append(d.answer.plan_id)
            if len(ids) > self.per_agent:
                self._by_id.pop(ids.popleft(), None)
        self._expire(time.monotonic())

    def get(self, agent_id: str, plan_id: str) -> Served | None:
        """The agent's decision ``plan_id``; None when unknown, expired, pushed out, or another agent's."""
        self._expire(time.monotonic())
        found = self._by_id.get(plan_id)
        return found if found is not None and found.agent_id == agent_id else None

    def forget(self, agent_ids: list[str]) -> None:
        """Drop the agents' decisions (a reset: they start afresh)."""
        for agent in agent_ids:
            for plan_id in self._by_agent.pop(agent, ()):
                self._by_id.pop(plan_id, None)

    def _expire(self, now: float) -> None:
        while self._by_id:
            plan_id, oldest = next(iter(self._by_id.items()))
            if now - oldest.at <= self.ttl_s and len(self._by_id) <= self.max_total:
                return
            del self._by_id[plan_id]
            ids = self._by_agent.get(oldest.agent_id)
            if ids and ids[0] == plan_id:  # an agent's ids are in serving order, as the store's
                ids.popleft()
            if ids is not None and not ids:
                del self._by_agent[oldest.agent_id]


def served(requests: list[PlanRequest], answers: list[PlanAnswer], obs: np.ndarray, warm_start: np.ndarray | None,
           goals: list[AgentObjective | None]) -> list[Served]:
    """The N decisions of a planned batch as ``DecisionStore`` keeps them.

    Args:
        obs: (N, S) observations; ``warm_start``: (N, H, A) the plans they started from, NaN rows for none.
        goals: ``rows.objectives(requests)``.
    """
    now = time.monotonic()
    starts = [None] * len(requests) if warm_start is None else \
        [None if np.isnan(w).any() else w.copy() for w in warm_start]
    return [Served(r.agent_id, now, obs[i].copy(), starts[i], goals[i], answers[i]) for i, r in enumerate(requests)]


class Explainer:
    """Explains decisions through the planner deployment, from a ``DecisionStore`` or the agents' records.

    Args:
        planner: the planner deployment's handle (its ``explain``).
        store: the engine's served decisions.
        read: the engine's record read (``agent ids -> records``).
    """

    def __init__(self, planner: Any, store: DecisionStore, read: Any) -> None:
        self.planner, self.store, self.read = planner, store, read

    async def explain(self, req: ExplainRequest) -> dict[str, Any] | Rejected:
        """The explanation's JSON body (``ExplainResponse``), or a 404 naming what is unknown."""
        inputs = await self._inputs(req)
        if isinstance(inputs, Rejected):
            return inputs
        obs, warm_start, objective, decision = inputs
        name = objective.name if objective is not None else "learned"
        proposals = np.asarray(req.proposals, np.float32) if req.proposals else None
        reward_model = None if decision is None else decision.answer.reward_model  # as the decision was planned
        body = await self.planner.explain.remote(obs, name, rows.constraints([objective]), warm_start, proposals,
                                                 reward_model)
        served_body = None if decision is None else {k: getattr(decision.answer, k) for k in SERVED_FIELDS}
        return body | {"agent_id": req.agent_id, "plan_id": req.plan_id, "served": served_body}

    async def explained(self, req: PlanRequest, answer: PlanAnswer) -> PlanAnswer:
        """``answer`` carrying the explanation its request asked for (``explain``), from the decision's own
        inputs; one that fails says why inside it: the decision stands either way."""
        if req.proposals is None:
            return answer
        try:
            body = await self.explain(ExplainRequest(agent_id=req.agent_id, plan_id=answer.plan_id,
                                                     proposals=req.proposals))
        except Exception as err:
            logger.exception("explaining %s failed", answer.plan_id)
            body = Rejected(503, f"explanation failed: {type(err).__name__}: {' '.join(str(err).split())[:200]}")
        return dataclasses.replace(answer, explanation=body.to_dict() if isinstance(body, Rejected) else body)

    async def _inputs(self, req: ExplainRequest) -> tuple[np.ndarray, np.ndarray | None, AgentObjective | None,
                                                           Served | None] | Rejected:
        """(observation (S,), warm start (H, A) or None, objective, the served decision or None)."""
        if req.plan_id is not None:
            found = self.store.get(req.agent_id, req.plan_id)
            if found is None:
                return Rejected(404, f"plan_id {req.plan_id!r} of agent {req.agent_id!r} is not known here: unknown, "
                                     f"older than {EXPLAIN_TTL_S:.0f} s or than the agent's last "
                                     f"{DECISIONS_PER_AGENT} decisions, or served over the fleet bus")
            return found.obs, found.warm_start, found.objective, found
        record: AgentRecord | None = (await self.read([req.agent_id]))[0]
        current = record is not None and record.continuing
        if req.observation is None and not current:
            return Rejected(404, f"agent {req.agent_id!r} has no current state (unknown, reset, or its episode "
                                 "ended); give an observation")
        if req.observation is not None:
            obs = np.asarray(req.observation, np.float32)
        else:  # a camera agent's state is its last frames (the planner pads a short stack)
            obs = record.frames if record.frames is not None else record.obs  # type: ignore[union-attr]
        objective = rows.agent_objective(req.objective) if req.objective is not None else \
            (record.objective if record is not None else None)
        start = record.warm_start if current and not rows.used_up(record) else None  # type: ignore[union-attr]
        return obs, start, objective, None  # type: ignore[union-attr,return-value]


