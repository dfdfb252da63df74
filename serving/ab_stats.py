"""Live A/B statistics: per-version totals of what the served agents did, their 95% intervals, and verdicts.

Plain numpy (no Ray, no torch): the engine accumulates with it and ``wm models compare`` reads it.

Why these intervals:

- An agent's steps are correlated (one robot, one goal, one neighbourhood), so reward per step, violations
  per step and one-step prediction MSE are first averaged per agent, and the interval is the normal
  approximation over the per-agent means: agents are the independent units (assignment is sticky, so an
  agent's steps all belong to one arm).
- Episode success is a rate over ended episodes (terminated: success; truncated: not): Wilson's score
  interval, which stays inside [0, 1] and is honest at 0 or all successes.
- Planning latency is a mean over planner calls, each call one unit (normal approximation).

Two arms are compared on the difference candidate - production with Newcombe's interval built from the two
arms' own intervals; for symmetric normal intervals it is ``d +- z sqrt(se_c^2 + se_p^2)``. A metric is
'worse' when the whole difference interval lies on its bad side, 'better' on its good side, 'same' when it
holds 0, and 'insufficient' while an arm has fewer units than the metric's minimum.

Shapes: ``B`` agents a version has seen, ``C`` = len(AGENT_COLUMNS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

Z95 = 1.959963984540054
"""The standard normal's 97.5% quantile: two-sided 95% intervals."""
AGENT_COLUMNS = ("steps", "violations", "reward_steps", "reward_sum", "mse_n", "mse_sum")
"""Per agent: continuing steps seen, those with an observed violation, steps with a reported reward and
their sum, steps with a scored prediction and the sum of their MSEs."""
_COL = {name: i for i, name in enumerate(AGENT_COLUMNS)}


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval over ``n`` units (``mean`` None: no unit yet)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int
    """Units behind it: agents, planner calls or episodes."""

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}

    def __str__(self) -> str:
        if self.mean is None:
            return f"n/a (n={self.n})"
        return f"{self.mean:.4g} [{self.low:.4g}, {self.high:.4g}] (n={self.n})"


def normal_interval(n: int, mean: float, var: float, z: float = Z95) -> Interval:
    """Normal approximation from ``n`` units' mean and sample variance (one unit: no width, n says so)."""
    if n == 0:
        return Interval(None, None, None, 0)
    half = z * math.sqrt(max(var, 0.0) / n) if n > 1 else 0.0
    return Interval(mean, mean - half, mean + half, n)


def mean_interval(values: np.ndarray, z: float = Z95) -> Interval:
    """Normal-approximation interval of the mean of (B,) per-unit values."""
    values = np.asarray(values, np.float64)
    n = len(values)
    return normal_interval(n, float(values.mean()) if n else 0.0, float(values.var(ddof=1)) if n > 1 else 0.0, z)


def wilson_interval(successes: int, n: int, z: float = Z95) -> Interval:
    """Wilson's score interval of a rate: ``successes`` out of ``n`` trials."""
    if n == 0:
        return Interval(None, None, None, 0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(p, max(centre - half, 0.0), min(centre + half, 1.0), n)


def difference(candidate: Interval, production: Interval) -> Interval | None:
    """Newcombe's interval of candidate - production from each arm's own interval (None: an arm has none)."""
    c, p = candidate, production
    if c.mean is None or p.mean is None:
        return None
    d = c.mean - p.mean
    low = d - math.hypot(c.mean - c.low, p.high - p.mean)  # type: ignore[operator]
    high = d + math.hypot(c.high - c.mean, p.mean - p.low)  # type: ignore[operator]
    return Interval(d, low, high, min(c.n, p.n))


@dataclass(frozen=True)
class MetricSpec:
    """One compared metric."""

    name: str
    label: str
    higher_is_better: bool
    required: bool
    """A promotion needs enough data on it; the others (success, prediction error) are shown and gate only
    when both arms have enough: a warehouse floor's robots never end an episode by success."""
    min_n: int
    """Units each arm needs before the metric has a verdict."""


METRICS = (
    MetricSpec("reward", "reward per step (per-agent mean)", True, True, 20),
    MetricSpec("success", "episode success rate (Wilson)", True, False, 20),
    MetricSpec("violations", "observed violations per step (per-agent mean)", False, True, 20),
    MetricSpec("latency_ms", "planning latency per call, ms", False, True, 20),
    MetricSpec("prediction_mse", "one-step prediction MSE (per-agent mean)", False, False, 20),
)
"""What ``wm models compare`` shows and ``wm models promote`` gates on, in that order."""
VERDICTS = ("better", "same", "worse", "insufficient")


@dataclass(frozen=True)
class MetricComparison:
    """One metric of both arms, their difference and the verdict on the candidate."""

    spec: MetricSpec
    production: Interval
    candidate: Interval
    difference: Interval | None
    verdict: str
    """One of ``VERDICTS``."""

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.spec.name, "label": self.spec.label, "higher_is_better": self.spec.higher_is_better,
                "required": self.spec.required, "min_n": self.spec.min_n, "production": self.production.to_dict(),
                "candidate": self.candidate.to_dict(), "verdict": self.verdict,
                "difference": None if self.difference is None else self.difference.to_dict()}


def compare_metric(spec: MetricSpec, candidate: Interval, production: Interval) -> MetricComparison:
    """The verdict on ``candidate`` against ``production`` for one metric (see the module docstring)."""
    diff = difference(candidate, production)
    if diff is None or min(candidate.n, production.n) < spec.min_n:
        return MetricComparison(spec, production, candidate, diff, "insufficient")
    sign = 1.0 if spec.higher_is_better else -1.0
    good_low, good_high = sorted((sign * diff.low, sign * diff.high))  # type: ignore[operator]
    verdict = "worse" if good_high < 0 else "better" if good_low > 0 else "same"
    return MetricComparison(spec, production, candidate, diff, verdict)


class VersionStats:
    """One version's live totals: per agent the ``AGENT_COLUMNS``, planner-call latencies, ended episodes."""

    def __init__(self) -> None:
        self.agents: list[str] = []
        self._slots: dict[str, int] = {}
        self.table = np.zeros((0, len(AGENT_COLUMNS)))  # (B, C)
        self.calls = np.zeros(3)
        """Planner calls: count, sum and sum of squares of their latency in ms."""
        self.episodes = np.zeros(2, np.int64)
        """Ended episodes and those that ended terminated (success)."""

    def add(self, agent_ids: Sequence[str], column: str, values: np.ndarray) -> None:
        """Add (n,) ``values`` to ``column`` of the n agents (repeats add up)."""
        if len(agent_ids) == 0:
            return
        rows = self._rows(agent_ids)
        np.add.at(self.table[:, _COL[column]], rows, np.asarray(values, np.float64))

    def add_call(self, elapsed_ms: float) -> None:
        self.calls += (1.0, elapsed_ms, elapsed_ms * elapsed_ms)

    def add_episodes(self, ended: int, succeeded: int) -> None:
        self.episodes += (ended, succeeded)

    def _rows(self, agent_ids: Sequence[str]) -> np.ndarray:
        """Each agent's row, new agents appended."""
        new = [a for a in dict.fromkeys(agent_ids) if a not in self._slots]
        if new:
            self._slots.update((a, len(self.agents) + i) for i, a in enumerate(new))
            self.agents.extend(new)
            self.table = np.concatenate([self.table, np.zeros((len(new), len(AGENT_COLUMNS)))])
        return np.fromiter((self._slots[a] for a in agent_ids), np.int64, len(agent_ids))

    def intervals(self) -> dict[str, Interval]:
        """Each of ``METRICS`` as an interval (see the module docstring for the units)."""
        t = self.table
        n, total, squares = self.calls
        var = (squares - total * total / n) / (n - 1) if n > 1 else 0.0
        return {"reward": mean_interval(_ratio(t, "reward_sum", "reward_steps")),
                "success": wilson_interval(int(self.episodes[1]), int(self.episodes[0])),
                "violations": mean_interval(_ratio(t, "violations", "steps")),
                "latency_ms": normal_interval(int(n), total / n if n else 0.0, var),
                "prediction_mse": mean_interval(_ratio(t, "mse_sum", "mse_n"))}

    def to_dict(self) -> dict[str, Any]:
        return {"agents": self.agents, "columns": list(AGENT_COLUMNS), "table": self.table.tolist(),
                "calls": self.calls.tolist(), "episodes": self.episodes.tolist()}

    @classmethod
    def merged(cls, parts: Sequence[dict[str, Any]]) -> "VersionStats":
        """The totals of several writers' ``to_dict``s (an agent served by two replicas is one agent)."""
        out = cls()
        for part in parts:
            if part.get("columns") != list(AGENT_COLUMNS):
                raise ValueError(f"A/B stats columns {part.get('columns')!r}, expected {list(AGENT_COLUMNS)}")
            table = np.asarray(part["table"], np.float64).reshape(-1, len(AGENT_COLUMNS))
            rows = out._rows(part["agents"])
            np.add.at(out.table, rows, table)
            out.calls += np.asarray(part["calls"], np.float64)
            out.episodes += np.asarray(part["episodes"], np.int64)
        return out


def _ratio(table: np.ndarray, num: str, den: str) -> np.ndarray:
    """Per agent num / den, for the agents with den > 0."""
    d = table[:, _COL[den]]
    return table[d > 0, _COL[num]] / d[d > 0]
