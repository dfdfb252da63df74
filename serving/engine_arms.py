"""One batch's planner calls, an arm at a time: production's, and the live A/B test's candidate's.

``PlanEngine._plan`` splits a batch into its arms (``split``: every agent production's without an A/B test),
has each planned with one call (``plan``: both at once), and writes their records and transitions together.
Per arm, ``plan`` builds the planner call's inputs from what the engine holds (warm starts, hidden states,
camera agents' frame stacks), and records what was served: the answers, the decisions kept for ``explain``,
the arm's metrics, the live A/B totals and, for production's arm, the shadow comparison.

Shapes: ``N`` requests in the batch, ``n`` in one arm, ``S`` observation, ``F`` frames, ``Hi, Wi, C`` frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from actors.records import AgentObjective, AgentRecord, PlanAnswer
from planners.service import PlanBatch
from serving import rows
from serving.ab import LiveAB
from serving.engine_metrics import BatchMetrics
from serving.explain import DecisionStore, served
from serving.schema import PlanRequest
from serving.shadow import ShadowComparison
from worldmodel.data import Transitions


@dataclass(frozen=True)
class Batch:
    """What every arm of one planned batch reads: its N requests, their records and ``rows.continuation``s,
    (N, S) observations and their (N, 3) ``rows.violation_flags``, objectives and the planning budget."""

    requests: list[PlanRequest]
    records: list[AgentRecord | None]
    steps: list[rows.Continuation]
    obs: np.ndarray
    flags: np.ndarray
    goals: list[AgentObjective | None]
    budget_ms: float | None


class ArmPlanner:
    """Plans a batch's arms (``split``, ``plan``) and records what each served."""

    def __init__(self, planner: Any, ab: LiveAB | None, shadow: ShadowComparison | None, decisions: DecisionStore,
                 observed: BatchMetrics, candidate_observed: BatchMetrics, spawn: Callable[[Any], Any]) -> None:
        """``planner``: production's deployment handle; ``ab``: the live A/B test (None: none); ``observed`` and
        ``candidate_observed``: each arm's metrics; ``spawn``: runs background work (the shadow comparison)."""
        self.planner, self.ab, self.shadow, self.decisions = planner, ab, shadow, decisions
        self._observed, self._candidate_observed, self._spawn = observed, candidate_observed, spawn
        self._cameras: dict[int, tuple[tuple[int, int, int], int]] = {}
        """Per planner handle serving a camera model: its (frame shape, frames stacked)."""

    def split(self, requests: list[PlanRequest]) -> list[tuple[Any, np.ndarray]]:
        """(planner handle, (n,) request indices) of each arm with requests: production's, then the candidate's."""
        everyone = np.arange(len(requests))
        candidate = self.ab.arms(requests) if self.ab is not None else None
        if candidate is None or not candidate.any():
            return [(self.planner, everyone)]
        if candidate.all():
            return [(self.ab.candidate, everyone)]  # type: ignore[union-attr]
        return [(self.planner, everyone[~candidate]),
                (self.ab.candidate, everyone[candidate])]  # type: ignore[union-attr]

    async def plan(self, batch: Batch, planner: Any, idx: np.ndarray,
                   transitions: Transitions | None) -> tuple[list[PlanAnswer], list[AgentRecord]]:
        """One planner call for the batch's requests ``idx`` (n,), which close ``transitions``
        (``rows.transitions``): their answers and new records."""
        requests, records, steps = ([xs[i] for i in idx] for xs in (batch.requests, batch.records, batch.steps))
        obs, flags, goals = batch.obs[idx], batch.flags[idx], [batch.goals[i] for i in idx]  # (n, S), (n, 3)
        # warm-started only where the request continues its record's episode
        warm_start = rows.warm_starts(records, steps)
        stacks = await self.frame_stacks(planner, requests, records, steps)  # camera agents' (n, F, Hi, Wi, C)
        names = [g.name if g is not None else "learned" for g in goals]
        inputs = (obs if stacks is None else stacks, warm_start, names, rows.constraints(goals), batch.budget_ms,
                  rows.stacked(records, steps, "hidden"), [r.mode for r in requests], [r.site for r in requests],
                  [r.reward_model for r in requests], [None if r is None else r.model_version for r in records])
        planned: PlanBatch = await planner.plan.remote(*inputs)
        # the answers, the records that the next requests will need, and what explaining them needs
        answers = rows.answers(requests, planned, warm_start)
        records_out = rows.new_records(requests, records, steps, obs, planned, answers, goals, stacks)
        self.decisions.put(served(requests, answers, obs if stacks is None else stacks, warm_start, goals))
        production = planner is self.planner
        (self._observed if production else self._candidate_observed).observe_batch(planned, records, steps, obs,
                                                                                   flags, transitions)
        if self.ab is not None:
            self.ab.observe(planned, records, steps, obs, flags, transitions)
        if self.shadow is not None and production:  # in the background: the shadow version plans the same inputs
            self._spawn(self.shadow.compare(inputs, planned.actions, transitions))
        return answers, records_out

    async def frame_stacks(self, planner: Any, requests: list[PlanRequest], records: list[AgentRecord | None],
                            steps: list[rows.Continuation]) -> np.ndarray | None:
        """Camera agents' frame stacks (``rows.frame_stacks``) of the depth and frame shape ``planner`` serves
        (asked once per planner: ``check_request`` let only frames of its shape in); None for vector agents."""
        if requests[0].image is None:
            return None
        camera = self._cameras.get(id(planner))
        if camera is None:
            info = await planner.info.remote()
            camera = self._cameras[id(planner)] = (tuple(info["image_shape"]), int(info["frames"]))
        return rows.frame_stacks(requests, records, steps, *camera)
