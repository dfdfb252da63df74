"""Live A/B math on known answers: intervals, their difference, verdicts, and per-agent totals merged."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.ab_stats import (METRICS, Interval, VersionStats, compare_metric, difference, mean_interval,
                              normal_interval, wilson_interval)

SPEC = {m.name: m for m in METRICS}


def test_normal_interval_of_a_mean() -> None:
    got = mean_interval(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))  # mean 3, sample variance 2.5
    half = 1.959963984540054 * math.sqrt(2.5 / 5)
    assert (got.mean, got.n) == (3.0, 5)
    assert got.low == pytest.approx(3 - half) and got.high == pytest.approx(3 + half)
    assert mean_interval(np.zeros(0)) == Interval(None, None, None, 0)
    assert normal_interval(1, 2.0, 0.0) == Interval(2.0, 2.0, 2.0, 1)


def test_wilson_interval_known_values() -> None:
    half = wilson_interval(5, 10)  # textbook: 0.5 [0.2366, 0.7634]
    assert half.mean == 0.5
    assert half.low == pytest.approx(0.2366, abs=1e-4) and half.high == pytest.approx(0.7634, abs=1e-4)
    none = wilson_interval(0, 10)  # never a negative rate, and not zero-width at 0 successes
    assert none.low == 0.0 and none.high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10).high == pytest.approx(1.0) and wilson_interval(0, 0).mean is None


def test_difference_of_symmetric_intervals_is_the_two_sample_normal_interval() -> None:
    a, b = Interval(1.0, 0.7, 1.3, 50), Interval(0.5, 0.1, 0.9, 40)
    d = difference(a, b)
    assert d is not None and d.mean == 0.5 and d.n == 40
    assert d.low == pytest.approx(0.5 - math.hypot(0.3, 0.4)) and d.high == pytest.approx(0.5 + 0.5)
    assert difference(Interval(None, None, None, 0), b) is None


@pytest.mark.parametrize("metric, candidate, verdict", [
    ("reward", Interval(-2.0, -2.2, -1.8, 30), "worse"),     # higher is better, whole difference below 0
    ("reward", Interval(-0.9, -1.3, -0.5, 30), "same"),      # holds 0
    ("reward", Interval(0.5, 0.3, 0.7, 30), "better"),
    ("violations", Interval(0.5, 0.3, 0.7, 30), "worse"),    # lower is better: the same numbers, flipped
    ("violations", Interval(-2.0, -2.2, -1.8, 30), "better"),
    ("reward", Interval(-2.0, -2.2, -1.8, 19), "insufficient"),  # under the 20 units each arm needs
])
def test_verdicts(metric: str, candidate: Interval, verdict: str) -> None:
    production = Interval(-1.0, -1.2, -0.8, 200)
    assert compare_metric(SPEC[metric], candidate, production).verdict == verdict


def test_per_agent_means_and_merging_two_writers() -> None:
    one, two = VersionStats(), VersionStats()
    one.add(["a", "a", "b"], "reward_steps", np.ones(3))
    one.add(["a", "a", "b"], "reward_sum", np.array([1.0, 3.0, 4.0]))  # a: 2 per step, b: 4
    two.add(["a"], "reward_steps", np.ones(1))
    two.add(["a"], "reward_sum", np.array([2.0]))  # a again on another replica: one agent, 3 steps, mean 2
    for ms in (10.0, 20.0, 30.0):
        one.add_call(ms)
    one.add_episodes(4, 1)
    merged = VersionStats.merged([one.to_dict(), two.to_dict()])
    assert merged.agents == ["a", "b"]
    got = merged.intervals()
    assert got["reward"].mean == pytest.approx(3.0) and got["reward"].n == 2  # mean of (2, 4)
    assert got["latency_ms"].mean == pytest.approx(20.0) and got["latency_ms"].n == 3
    assert got["latency_ms"].high - 20.0 == pytest.approx(1.959963984540054 * 10 / math.sqrt(3))
    assert got["success"].mean == 0.25 and got["success"].n == 4
    assert got["violations"].mean is None and got["prediction_mse"].n == 0
    with pytest.raises(ValueError, match="columns"):
        VersionStats.merged([{**one.to_dict(), "columns": ["x"]}])
