"""Shadow comparison: a candidate model version plans the batches production plans, and never answers.

For every batch production has answered (while a live A/B test runs, production's arm of it: the
candidate's agents are compared live instead, ``serving.ab``), ``ShadowComparison.compare`` (run in the
background) plans the same inputs with the shadow version and scores both versions' one-step predictions on
the transitions that batch closed. A batch is skipped while ``MAX_IN_FLIGHT`` comparisons are still
running: a slow shadow must not pile up tasks that each hold their batch. ``ShadowStats`` keeps the
running totals that the ingress's ``GET /v1/models`` reports; the metrics get the shadow's prediction
error (production's is recorded when its batch is answered) and the mean action difference per batch.

Shapes: ``N`` requests in the batch, ``A`` action.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.metrics import ServingMetrics
from worldmodel.data import Transitions

logger = logging.getLogger("ray.serve")

ROLES = ("production", "shadow")
"""The two versions compared, as the ``role`` tag of the metrics names them."""
MAX_IN_FLIGHT = 2
"""Comparisons running at once; a batch answered while this many run is not compared (``ShadowStats.skipped``)."""


@dataclass
class ShadowStats:
    """Running comparison of the shadow version against production on the same requests."""

    batches: int = 0
    """Batches both versions planned."""
    requests: int = 0
    """Requests in those batches."""
    skipped: int = 0
    """Batches not compared because ``MAX_IN_FLIGHT`` comparisons were still running."""
    action_diff_sum: float = 0.0
    """Sum over requests of the mean absolute difference between the two versions' first actions."""
    errors: dict[str, list[float]] = field(default_factory=lambda: {role: [0.0, 0] for role in ROLES})
    """Per role, [sum of one-step prediction errors, how many] over the closed transitions."""

    def add_actions(self, diff: np.ndarray) -> None:
        """Count one batch: ``diff`` (N,) is each request's mean absolute action difference."""
        self.batches += 1
        self.requests += len(diff)
        self.action_diff_sum += float(diff.sum())

    def add_errors(self, role: str, errors: np.ndarray) -> None:
        """Add one role's prediction errors (one per closed transition)."""
        self.errors[role][0] += float(errors.sum())
        self.errors[role][1] += len(errors)

    def summary(self) -> dict[str, Any]:
        mean = {role: (s / n if n else None) for role, (s, n) in self.errors.items()}
        return {"batches": self.batches, "requests": self.requests, "skipped": self.skipped,
                "mean_action_difference": self.action_diff_sum / self.requests if self.requests else None,
                "mean_prediction_error": mean}


class ShadowComparison:
    """Plans with the shadow deployment what production planned, and scores both; failures are only logged."""

    def __init__(self, production: Any, shadow: Any, metrics: ServingMetrics) -> None:
        """``production`` and ``shadow`` are planner deployment handles (``plan`` and ``score`` methods)."""
        self.production, self.shadow, self.metrics = production, shadow, metrics
        self.stats = ShadowStats()
        self.in_flight = 0
        """Comparisons started and not finished."""

    async def compare(self, inputs: tuple[Any, ...], prod_actions: np.ndarray,
                      transitions: Transitions | None) -> None:
        """Plan ``inputs`` (the production planner call's arguments) with the shadow version and score
        both versions on ``transitions`` (the ones the batch closed, if any).

        Args:
            inputs: the arguments production's ``plan`` was called with.
            prod_actions: (N, A) the actions production answered.
            transitions: the transitions the batch closed, or None.
        """
        if self.in_flight >= MAX_IN_FLIGHT:
            self.stats.skipped += 1
            return
        self.in_flight += 1
        try:
            calls = [self.shadow.plan.remote(*inputs)]
            if transitions is not None:
                scored = (transitions.obs, transitions.actions, transitions.new_obs)
                calls += [self.production.score.remote(*scored), self.shadow.score.remote(*scored)]
            out = await asyncio.gather(*calls)
        except Exception as err:  # the shadow must never affect answers; its failures are reported
            logger.warning("shadow comparison failed: %s", err)
            return
        finally:
            self.in_flight -= 1
        dims = transitions.obs.shape[1] if transitions is not None else 1
        self._record(np.abs(out[0].actions - prod_actions).mean(1), out[1:], dims)

    def _record(self, diff: np.ndarray, scores: list[dict[str, Any]], dims: int) -> None:
        """Add one batch to the stats and metrics: ``diff`` (N,) per request, ``scores`` per role (or none) of
        transitions with ``dims`` observation dimensions."""
        self.stats.add_actions(diff)
        self.metrics.shadow_action_diff.set(float(diff.mean()))
        for role, scored in zip(ROLES, scores):
            self.stats.add_errors(role, scored["errors"])
            if role == "shadow":  # production's is recorded when its batch is answered
                tags = {"model_version": scored["model_version"]}
                self.metrics.prediction_error.observe(scored["mean_error"], tags=tags | {"role": role})
                # the served MSE series (and its alert) per version: the mean over rows of |error|^2 / S
                self.metrics.prediction_mse.observe(float(np.mean(np.square(scored["errors"]))) / dims, tags=tags)
