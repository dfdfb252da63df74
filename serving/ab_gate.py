"""The live A/B comparison that `wm models compare` shows and `wm models promote` gates on.

It merges every engine's published totals of the running test (``serving.ab.read_live``) for the test's
version and the version in production now, and compares them metric by metric (``serving.ab_stats``).
A promotion of the test's version to production is refused when a metric is 'worse' beyond its interval,
or a required metric has too little data; ``--force`` promotes anyway and the registry's history records
the override with what it overrode. A version with no running test is gated by its holdout only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serving.ab import read_live
from serving.ab_stats import METRICS, MetricComparison, VersionStats, compare_metric
from worldmodel.registry import ModelRegistry
from worldmodel.registry_records import ABTest

STATUSES = ("no_test", "insufficient", "worse", "ok")
"""The comparison's status: no test runs; a required metric lacks data; a metric is worse; nothing holds it back."""


@dataclass(frozen=True)
class ABComparison:
    """The running test's arms side by side."""

    test: ABTest | None
    production: str | None
    """The production version now (its arm's totals are this version's)."""
    metrics: tuple[MetricComparison, ...]
    writers: int
    """Engines whose totals were merged."""

    @property
    def worse(self) -> list[MetricComparison]:
        return [m for m in self.metrics if m.verdict == "worse"]

    @property
    def insufficient(self) -> list[MetricComparison]:
        """Required metrics that lack data in an arm."""
        return [m for m in self.metrics if m.verdict == "insufficient" and m.spec.required]

    @property
    def status(self) -> str:
        """One of ``STATUSES``."""
        if self.test is None:
            return "no_test"
        return "worse" if self.worse else "insufficient" if self.insufficient else "ok"

    def problem(self) -> str | None:
        """What holds the test's version back, in one line (None: nothing, or no test runs)."""
        if self.test is None or self.status == "ok":
            return None
        if self.worse:
            return "; ".join(f"{m.spec.label} is worse: candidate {m.candidate} vs production {self.production} "
                             f"{m.production}" for m in self.worse)
        return "too little live data: " + "; ".join(
            f"{m.spec.label} has n={m.candidate.n} in the candidate arm and n={m.production.n} in production's "
            f"(needs {m.spec.min_n} each)" for m in self.insufficient)

    def refusal(self) -> str | None:
        """Why promoting the test's version to production is refused, in one line; None when it may be."""
        problem = self.problem()
        if problem is None:
            return None
        return (f"refusing to promote {self.test.version} to production: live A/B test "  # type: ignore[union-attr]
                f"{self.test.id}: {problem}; pass --force to promote anyway (recorded in the registry history)")

    def to_dict(self) -> dict[str, Any]:
        return {"test": None if self.test is None else self.test.to_dict(), "production": self.production,
                "status": self.status, "writers": self.writers, "metrics": [m.to_dict() for m in self.metrics]}


def live_comparison(registry: ModelRegistry) -> ABComparison:
    """Compare the running test's version with production's on every engine's published totals."""
    test = registry.ab()
    production = registry.production()
    prod_version = production.version if production is not None else None
    if test is None:
        return ABComparison(None, prod_version, (), 0)
    published = read_live(registry, test.id)
    arms = [VersionStats.merged([p["versions"][v] for p in published if v in p.get("versions", {})])
            for v in (test.version, prod_version)]
    candidate, prod = (a.intervals() for a in arms)
    metrics = tuple(compare_metric(spec, candidate[spec.name], prod[spec.name]) for spec in METRICS)
    return ABComparison(test, prod_version, metrics, len(published))


def summary_lines(comparison: ABComparison) -> list[str]:
    """`wm models compare`'s table: one line per metric, both arms with their 95% intervals, and the verdict."""
    test = comparison.test
    if test is None:
        return [f"no A/B test is running (production {comparison.production or 'unset'}); start one with "
                f"`wm models ab VERSION --share 0.1`"]
    lines = [f"A/B test {test.id}: candidate {test.version} serves {test.share:.0%} of the agents since "
             f"{test.started}; production {comparison.production}; totals of {comparison.writers} engine(s); "
             f"status {comparison.status}",
             f"{'metric':<48} {'production':<40} {'candidate':<40} verdict"]
    lines += [f"{m.spec.label:<48} {str(m.production):<40} {str(m.candidate):<40} {m.verdict}"
              for m in comparison.metrics]
    return lines
