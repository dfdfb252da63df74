"""The drift watch, the scheduler's gate and the serving feed against hand-worked answers, on a fake clock (no Ray)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from actors.records import AgentRecord
from cluster.monitoring.rules import Thresholds
from learners.drift import (BUSY, NOT_PRODUCTION, RATE_LIMITED, SKIPPED, STARTED, DriftAnswer, DriftCause, DriftGate,
                            DriftWatch, check_trigger)
from learners.settings import PREDICTION_MSE_LIMIT, DriftSettings
from planners.served import PlanBatch, empty_batch
from serving.engine_metrics import BatchMetrics, DriftFeed, scored_mse
from serving.rows import Continuation, violation_flags
from tests.serving.test_engine import Metrics  # records every observation, as the engine tests do

HOUR = 3600.0
SETTINGS = DriftSettings(window_s=60.0, sustain_s=300.0, min_rows=10, min_interval_s=6 * HOUR, retry_s=300.0)
LOW, HIGH = 0.1, 1.0  # either side of the 0.5 threshold


def feed(watch: DriftWatch, mse: float, start: float, end: float, *, version: str = "1.0.0", rows: int = 5,
         step: float = 1.0) -> list[tuple[float, DriftCause]]:
    """One batch of ``rows`` agents at ``mse`` every ``step`` seconds in [start, end); the fires, with their times."""
    fires = []
    for t in np.arange(start, end, step):
        cause = watch.observe(version, mse, rows, float(t))
        if cause is not None:
            fires.append((float(t), cause))
    return fires


def test_the_threshold_is_the_alert_rules() -> None:
    assert DriftSettings().threshold == Thresholds().prediction_mse == PREDICTION_MSE_LIMIT


def test_a_short_spike_does_not_fire() -> None:
    watch = DriftWatch(SETTINGS, production="1.0.0")
    assert feed(watch, LOW, 0, 200) == []
    # 200 s of high error lifts the 60 s mean for at most 260 s, short of the 300 s it must last
    assert feed(watch, HIGH, 200, 400) == [] and feed(watch, LOW, 400, 1000) == []
    # one batch a hundred times the threshold, many rows: the mean stays up for one window only
    assert feed(watch, 50.0, 1000, 1001, rows=500) == [] and feed(watch, LOW, 1001, 2000) == []


def test_a_sustained_rise_fires_once_with_its_cause() -> None:
    watch = DriftWatch(SETTINGS, production="1.0.0")
    assert feed(watch, LOW, 0, 100) == []
    fires = feed(watch, HIGH, 100, 1000)
    # the 60 s mean passes 0.5 once 27 of its 60 batches are high (t = 126); 300 s later it fires
    assert [t for t, _ in fires] == [426.0]
    cause = fires[0][1]
    assert cause.version == "1.0.0" and cause.since == 126.0 and cause.detected == 426.0
    assert cause.mse == pytest.approx(HIGH) and cause.threshold == 0.5 and cause.rows == 60 * 5
    trigger = cause.to_trigger()
    assert trigger["kind"] == "drift" and trigger["since"] == "1970-01-01T00:02:06+00:00"
    assert check_trigger(trigger) is trigger  # what the learner records


def test_a_started_retrain_holds_the_watch_for_the_rate_limit() -> None:
    watch = DriftWatch(SETTINGS, production="1.0.0")
    [(t, _)] = feed(watch, HIGH, 0, 400)
    watch.settle(DriftAnswer(STARTED, "retraining"), t)
    fires = feed(watch, HIGH, t + 1, t + 7 * HOUR, step=5.0)
    assert len(fires) == 1 and t + 6 * HOUR <= fires[0][0] < t + 6 * HOUR + 5  # one more, after six hours


def test_refusals_hold_the_watch_until_their_retry_time() -> None:
    watch = DriftWatch(SETTINGS, production="1.0.0")
    [(t, _)] = feed(watch, HIGH, 0, 400)
    watch.settle(DriftAnswer(BUSY, "a retrain is running"), t)  # no retry time: the watch's retry_s
    [(t2, again)] = feed(watch, HIGH, t + 1, t + 400)
    assert t2 == t + SETTINGS.retry_s and again.since == 1.0  # the same rise, still since its start
    watch.settle(DriftAnswer(RATE_LIMITED, "one an hour", retry_at=t2 + HOUR), t2)
    assert [f for f, _ in feed(watch, HIGH, t2 + 1, t2 + HOUR + 10)] == [t2 + HOUR]


def test_only_the_production_version_fires() -> None:
    watch = DriftWatch(SETTINGS, production="1.0.0")
    assert feed(watch, HIGH, 0, 1000, version="2.0.0") == []  # a candidate's error, however high
    watch.production = "2.0.0"  # promoted: its window starts empty
    assert [t for t, _ in feed(watch, HIGH, 1000, 1400, version="2.0.0")] == [1301.0]


def test_too_few_rows_do_not_count() -> None:
    watch = DriftWatch(SETTINGS, production="1.0.0")
    assert feed(watch, HIGH, 0, 1000, step=10.0, rows=1) == []  # 6 rows a window, 10 needed


def test_the_gate_refuses_while_running_and_within_the_interval() -> None:
    gate = DriftGate(6 * HOUR)
    assert gate.refusal(0.0, running=True).outcome == BUSY  # type: ignore[union-attr]
    assert gate.refusal(0.0, running=False) is None
    gate.started(0.0)
    refusal = gate.refusal(HOUR, running=False)
    assert refusal is not None and refusal.outcome == RATE_LIMITED and refusal.retry_at == 6 * HOUR
    assert gate.refusal(6 * HOUR, running=False) is None


@pytest.mark.parametrize("fields, message", [
    ({"window_s": 600.0}, "window_s .* must be <= sustain_s"),
    ({"threshold": 0.0}, "threshold must be > 0"),
    ({"min_rows": 0}, "min_rows must be an int >= 1"),
    ({"min_interval_s": -1.0}, "min_interval_s must be >= 0"),
])
def test_settings_are_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DriftSettings(**fields)
    with pytest.raises(ValueError, match="unknown field"):
        DriftSettings.from_dict({"sustain": 1})
    with pytest.raises(ValueError, match="'kind' in"):
        check_trigger({"kind": "cron"})


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_feed_asks_once_and_counts_the_answer() -> None:
    metrics: Any = Metrics()
    clock, asked = _Clock(), []

    async def no_scheduler(cause: DriftCause, name: str) -> DriftAnswer:
        asked.append((cause.detected, cause.version, name))
        return DriftAnswer(SKIPPED, "no retrain scheduler")

    async def main() -> DriftFeed:
        drift = DriftFeed(metrics, SETTINGS, clock=clock, ask=no_scheduler)
        for t in range(0, 1000):  # production 1.0.0 drifts; the candidate 2.0.0's error does not count
            clock.now = float(t)
            drift.observe("1.0.0", {"1.0.0": (HIGH, 5), "2.0.0": (10.0, 5)})
            await asyncio.sleep(0)  # the background request runs, as on the engine's loop
        return drift

    # above from t = 1 (t = 0's 5 rows are too few); asked at 301, then every retry_s: 601, 901
    assert asyncio.run(main()).answers == {SKIPPED: 3}
    assert asked == [(t, "1.0.0", SETTINGS.scheduler) for t in (301.0, 601.0, 901.0)]
    assert metrics.drift_retrains.calls == [(1, {"model_version": "1.0.0", "outcome": SKIPPED})] * 3


def test_batch_metrics_feed_the_served_versions_mse_to_the_watch() -> None:
    records = [AgentRecord(agent_id=a, eps_id="e", t=0, model_version="1.0.0", updated=0.0, request_ids=(),
                           answer=None, obs=np.zeros(2, np.float32), predicted=np.zeros(2, np.float32))
               for a in "ab"]
    obs = np.array([[1.0, 1.0], [2.0, 0.0]], np.float32)  # (N, S): MSE 1 and 2
    steps = [Continuation(True, None)] * 2
    assert scored_mse(records, steps, obs) == {"1.0.0": (1.5, 2)}
    batch = PlanBatch(**empty_batch(2, 3, 2, 1), hidden=None, iterations=1, elapsed_ms=1.0, model_version="1.0.0",
                      fallback_source="zero")
    metrics: Any = Metrics()
    clock = _Clock()
    observed = BatchMetrics(metrics, DriftSettings(window_s=1.0, sustain_s=1.0, min_rows=2))
    assert observed.drift is not None and BatchMetrics(metrics, DriftSettings(enabled=False)).drift is None
    asked: list[DriftCause] = []

    async def scheduler(cause: DriftCause, name: str) -> DriftAnswer:
        asked.append(cause)
        return DriftAnswer(NOT_PRODUCTION, "promoted meanwhile")

    async def main() -> None:
        observed.drift.clock, observed.drift.ask = clock, scheduler  # type: ignore[union-attr]
        for t in (0.0, 0.5, 1.0, 1.5):
            clock.now = t
            observed.observe_batch(batch, records, steps, obs, violation_flags(records, steps, obs), None)
            await asyncio.sleep(0)

    asyncio.run(main())
    assert [(c.version, c.mse, c.since, c.detected) for c in asked] == [("1.0.0", 1.5, 0.0, 1.0)]
    assert metrics.drift_retrains.calls == [(1, {"model_version": "1.0.0", "outcome": NOT_PRODUCTION})]


def test_serve_and_learn_flags_set_the_drift_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from cluster.cli import build_parser, main
    from cluster.commands.serve import drift_settings
    from serving.config import AppConfig

    def serve_args(*flags: str) -> Any:
        argv = ["serve", "--model", "m", *flags]
        return build_parser(argv).parse_args(argv)

    assert drift_settings(serve_args()) == DriftSettings()
    off = drift_settings(serve_args("--no-drift-retrain", "--drift-sustain-s", "120"))
    assert off == DriftSettings(enabled=False, sustain_s=120.0)
    assert AppConfig.from_dict(AppConfig(model="m", drift=off).to_dict()).drift == off  # as deployments get it
    with pytest.raises(ValueError, match="--drift-sustain-s 10: .*window_s .* must be <= sustain_s"):
        drift_settings(serve_args("--drift-sustain-s", "10"))
    # refused before Ray starts, in one line
    assert main(["learn", "--data", "d", "--registry", "r", "--schedule", "@daily", "--address", "auto",
                 "--drift-min-interval-s", "-1", "--json"]) != 0
    assert "--drift-min-interval-s must be >= 0 seconds, got -1.0" in capsys.readouterr().out
