"""The metrics of each planned batch, as the engine exports them (``serving.metrics`` names them), and the drift
watch they feed (``DriftFeed``: a sustained rise of the production version's prediction MSE asks for a retrain).

Shapes: ``N`` requests in the batch, ``S`` observation, ``B`` transitions the batch closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Awaitable, Callable, Sequence

import numpy as np

from actors.records import AgentRecord
from learners.drift import FAILED, SKIPPED, DriftAnswer, DriftCause, DriftWatch, request_drift_retrain
from learners.settings import DriftSettings
from planners.constraints import Constraint
from planners.service import PlanBatch
from serving import rows
from serving.metrics import NO_VERSION, ServingMetrics
from worldmodel.data import Transitions

logger = logging.getLogger("ray.serve")


class BatchMetrics:
    """Exports what each planned batch did, and keeps the served version's gauge on the one served."""

    def __init__(self, metrics: ServingMetrics, drift: DriftSettings | None = None, role: str = "production") -> None:
        """``drift``: watch the served version's prediction MSE for drift (None or not enabled: no watch);
        ``role``: the ``role`` tag of the batches' versions ('candidate' for a live A/B test's candidate arm)."""
        self.metrics, self.role = metrics, role
        self.served_version: str | None = None
        self.drift = DriftFeed(metrics, drift) if drift is not None and drift.enabled else None

    def observe_batch(self, batch: PlanBatch, records: Sequence[AgentRecord | None], steps: Sequence[rows.Continuation],
                      obs: np.ndarray, flags: np.ndarray, transitions: Transitions | None) -> None:
        """One planned batch from what the engine holds: ``records`` and ``steps`` (``rows.continuation``) of its
        N requests, their (N, S) observations and the transitions they closed: its plans, fallbacks by reason and
        source, shield interventions by constraint, predicted violations, the ensemble's disagreement, the served
        version, the closed transitions' prediction errors and MSE and reward per version, how many it logged,
        and the violations observed in its observations, counted for the version that answered the agent."""
        records, steps = list(records), list(steps)  # flags: their (N, 3) ``rows.violation_flags``
        self._planned(batch)
        self._errors(rows.prediction_errors(records, steps, obs))
        scored = scored_mse(records, steps, obs)
        for version, (mse, _) in scored.items():
            self.metrics.prediction_mse.observe(mse, tags={"model_version": version})
        if self.drift is not None:  # the planner's version is the one served as production
            self.drift.observe(batch.model_version, scored)
        versions = {r.model_version for r in records if r is not None}
        for version in sorted(versions):  # a batch holds one or two versions (around a switch)
            mine = np.array([r is not None and r.model_version == version for r in records])
            self._observed(version, rows.observed_violations(flags[mine]))
        if transitions is not None:
            self._rewards(transitions)
            self.metrics.logged.inc(len(transitions))

    def _planned(self, batch: PlanBatch) -> None:
        """What the planner call did: plans, its latency, fallbacks, the shield, predicted violations, version."""
        m, version = self.metrics, batch.model_version
        tags = {"model_version": version}
        m.batch_size.observe(len(batch.actions))
        m.plans.inc(len(batch.actions), tags=tags)
        m.planning_latency.observe(batch.elapsed_ms / 1000, tags=tags)
        fell = Counter((r, by) for r, by in zip(batch.reasons(), batch.fallback_by()) if r is not None)
        for (reason, by), count in fell.items():
            m.fallbacks.inc(count, tags={"model_version": version, "reason": reason, "by": by})
        codes, counts = np.unique(batch.shield[batch.shield != Constraint.NONE], return_counts=True)
        for code, count in zip(codes.tolist(), counts.tolist()):
            m.shield.inc(count, tags={"model_version": version, "constraint": Constraint(code).reason})
        # A predicted violation left after the shield is of the constraint the shield could not keep.
        codes, counts = np.unique(batch.shield[batch.margin < 0], return_counts=True)
        for code, count in zip(codes.tolist(), counts.tolist()):
            m.violations.inc(count, tags={"kind": "predicted", "constraint": Constraint(code).reason or "unknown",
                                          "model_version": version})
        m.disagreement.set(float(np.mean(batch.disagreement)), tags=tags)
        if version != self.served_version:  # the gauge names the served version; the old one drops to 0
            if self.served_version is not None:
                m.version.set(0, tags={"model_version": self.served_version, "role": self.role})
            self.served_version = version
        # Set every batch: Ray's metrics agent stops exporting a gauge that is not set again for a while.
        m.version.set(1, tags={"model_version": version, "role": self.role})

    def _errors(self, errors: list[tuple[str, float]]) -> None:
        """One observation per version of the mean prediction error, as the shadow's."""
        by_version: dict[str, list[float]] = {}
        for v, e in errors:
            by_version.setdefault(v, []).append(e)
        for v, es in by_version.items():
            self.metrics.prediction_error.observe(sum(es) / len(es), tags={"model_version": v, "role": "production"})

    def _rewards(self, transitions: Transitions) -> None:
        """The transitions' steps and their rewards' positive and negative parts, per version that acted."""
        m = self.metrics
        for version, (steps, gained, lost) in reward_totals(transitions).items():
            tags = {"model_version": version}
            m.reward_steps.inc(steps, tags=tags)
            if gained > 0:  # a Ray counter takes only positive increments
                m.reward_gained.inc(gained, tags=tags)
            if lost > 0:
                m.reward_lost.inc(lost, tags=tags)

    def _observed(self, version: str, observed: Counter[str]) -> None:
        for constraint, count in observed.items():
            self.metrics.violations.inc(count, tags={"kind": "observed", "constraint": constraint,
                                                     "model_version": version})


def prediction_mse(records: Sequence[AgentRecord | None], steps: Sequence[rows.Continuation],
                   obs: np.ndarray) -> dict[str, float]:
    """Per model version, the mean over its scored agents of the one-step prediction MSE (the mean over the
    dims the model predicted, NaN in ``predicted`` left out) of agents whose step continues their episode;
    ``obs``: (N, S). Versions with no scored agent are absent."""
    return {v: mse for v, (mse, _) in scored_mse(records, steps, obs).items()}


def scored_mse(records: Sequence[AgentRecord | None], steps: Sequence[rows.Continuation],
               obs: np.ndarray) -> dict[str, tuple[float, int]]:
    """``prediction_mse`` with, per version, how many agents were scored: {version: (mse, agents)}."""
    scored, mse = rows.agent_mse(records, steps, obs)  # (n,), (n,)
    if not len(scored):
        return {}
    versions = np.array([records[i].model_version for i in scored])  # type: ignore[union-attr]
    return {str(v): (float(mse[versions == v].mean()), int((versions == v).sum())) for v in np.unique(versions)}


class DriftFeed:
    """Feeds an engine's production prediction MSE to a ``DriftWatch``; when it fires, asks the retrain scheduler
    in the background (the batch is not held up) and counts its answer in ``fleetwm_drift_retrains_total``."""

    def __init__(self, metrics: ServingMetrics, settings: DriftSettings, *, clock: Callable[[], float] = time.time,
                 ask: Callable[[DriftCause, str], Awaitable[DriftAnswer]] = request_drift_retrain) -> None:
        """``clock``: wall-clock seconds; ``ask``: how the scheduler is asked (tests pass fakes of both)."""
        self.metrics, self.settings, self.clock, self.ask = metrics, settings, clock, ask
        self.watch = DriftWatch(settings)
        self.answers: Counter[str] = Counter()
        """The scheduler's answers so far, by outcome."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._said_skipped = False

    def observe(self, production: str, scored: dict[str, tuple[float, int]]) -> None:
        """One batch: ``production`` the version its planner served, ``scored`` its ``scored_mse``. Called on the
        engine's event loop, where a firing watch's request runs."""
        self.watch.production = production
        now = self.clock()
        for version, (mse, agents) in scored.items():
            cause = self.watch.observe(version, mse, agents, now)
            if cause is not None:
                task = asyncio.get_running_loop().create_task(self._ask(cause))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _ask(self, cause: DriftCause) -> None:
        try:
            answer = await self.ask(cause, self.settings.scheduler)
        except Exception as err:  # counted and logged as failed; the watch must not stay pending
            answer = DriftAnswer(FAILED, f"{type(err).__name__}: {err}")
        self.watch.settle(answer, self.clock())
        self.answers[answer.outcome] += 1
        self.metrics.drift_retrains.inc(1, tags={"model_version": cause.version, "outcome": answer.outcome})
        if answer.outcome != SKIPPED or not self._said_skipped:  # a server without a learner says so once
            logger.warning("drift of %s (windowed prediction MSE %.4g > %.4g since %s): retrain %s: %s",
                           cause.version, cause.mse, cause.threshold, cause.to_trigger()["since"], answer.outcome,
                           answer.detail)
        self._said_skipped |= answer.outcome == SKIPPED


def reward_totals(transitions: Transitions) -> dict[str, tuple[int, float, float]]:
    """Per version that acted (``NO_VERSION`` for the client's own actions): its steps among the B transitions,
    the sum of their positive rewards and the sum of minus their negative ones."""
    versions = np.where(transitions.model_version == "", NO_VERSION, transitions.model_version)
    rewards = np.asarray(transitions.rewards, np.float64)
    out = {}
    for v in np.unique(versions):  # one or two versions
        mine = rewards[versions == v]
        out[str(v)] = (len(mine), float(mine.clip(min=0).sum()), float(-mine.clip(max=0).sum()))
    return out
