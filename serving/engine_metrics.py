"""The metrics of each planned batch, as the engine exports them (``serving.metrics`` names them)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from planners.constraints import Constraint
from planners.service import PlanBatch
from serving.metrics import ServingMetrics


class BatchMetrics:
    """Exports what each planned batch did, and keeps the served version's gauge on the one served."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self.metrics = metrics
        self.served_version: str | None = None

    def observe(self, batch: PlanBatch, errors: list[tuple[str, float]], logged: int,
                observed: Counter[str] | None = None) -> None:
        """One planned batch: its N plans, fallbacks by reason and source, shield interventions by constraint,
        predicted violations, the ensemble's disagreement, the served version, the prediction errors of the
        transitions it closed (``(version, error)`` per transition), how many it logged, and the violations
        ``observed`` in its observations by constraint (``rows.observed_violations``)."""
        m, version = self.metrics, batch.model_version
        tags = {"model_version": version}
        m.batch_size.observe(len(batch.actions))
        m.plans.inc(len(batch.actions), tags=tags)
        reasons, counts = np.unique([r for r in batch.reasons() if r is not None], return_counts=True)
        for reason, count in zip(reasons.tolist(), counts.tolist()):
            m.fallbacks.inc(count, tags={"model_version": version, "reason": reason, "by": batch.fallback_source})
        codes, counts = np.unique(batch.shield[batch.shield != Constraint.NONE], return_counts=True)
        for code, count in zip(codes.tolist(), counts.tolist()):
            m.shield.inc(count, tags={"model_version": version, "constraint": Constraint(code).reason})
        # A predicted violation left after the shield is of the constraint the shield could not keep.
        codes, counts = np.unique(batch.shield[batch.margin < 0], return_counts=True)
        for code, count in zip(codes.tolist(), counts.tolist()):
            m.violations.inc(count, tags={"kind": "predicted", "constraint": Constraint(code).reason or "unknown"})
        for constraint, count in (observed or {}).items():
            m.violations.inc(count, tags={"kind": "observed", "constraint": constraint})
        m.disagreement.set(float(np.mean(batch.disagreement)), tags=tags)
        if version != self.served_version:  # the gauge names the served version; the old one drops to 0
            if self.served_version is not None:
                m.version.set(0, tags={"model_version": self.served_version, "role": "production"})
            m.version.set(1, tags={"model_version": version, "role": "production"})
            self.served_version = version
        by_version: dict[str, list[float]] = {}
        for v, e in errors:  # one observation per batch and version, as the shadow's
            by_version.setdefault(v, []).append(e)
        for v, es in by_version.items():
            m.prediction_error.observe(sum(es) / len(es), tags={"model_version": v, "role": "production"})
        if logged:
            m.logged.inc(logged)
