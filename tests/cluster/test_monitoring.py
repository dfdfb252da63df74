"""Alert rules, scrape configuration and dashboard (``cluster.monitoring``), checked by the real tools: promtool's
checks and unit tests of each alert, metric names against a live scrape of a served app, and a real Prometheus
firing the prediction error alert on that app. The served per-version metrics behind them (``serving.engine_metrics``)
are checked on a toy batch with known answers first."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import requests
import yaml

from actors.records import AgentObjective, AgentRecord
from cluster.monitoring.__main__ import HERE, rendered
from cluster.monitoring.dashboard import render_dashboard
from cluster.monitoring.prometheus import Fleet, prometheus_config
from cluster.monitoring.promql import exposed_names, metric_names
from cluster.monitoring.rules import RewardFloor, Thresholds, alert_rules, render_rules
from planners.served import PlanBatch, empty_batch
from serving.engine_metrics import BatchMetrics, prediction_mse, reward_totals
from serving.rows import Continuation, violation_flags
from tests.cluster.monitoring_app import LiveApp, Traffic, start_app
from tests.redis_fixtures import redis_server  # noqa: F401
from worldmodel.data import Transitions

UNIT_TESTS = Path(__file__).parent / "monitoring"
INSTALL_HINT = "make setup installs it (Debian's prometheus package: apt-get install prometheus)"


def _tool(name: str) -> str:
    """The path of ``promtool`` or ``prometheus``; the test skips (fails on CI) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed on CI; {INSTALL_HINT}")
        pytest.skip(f"{name} is not installed; {INSTALL_HINT}")
    return path


# -- the served metrics, on a toy batch ------------------------------------------------------
class _Recorded:
    def __init__(self) -> None:
        self.calls: list[tuple[float, dict[str, str] | None]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.calls.append((value, tags))

    observe = set = inc


class _Metrics(defaultdict):
    """A ``ServingMetrics`` whose every metric records its calls."""

    def __init__(self) -> None:
        super().__init__(_Recorded)

    def __getattr__(self, name: str) -> _Recorded:
        return self[name]


def _record(version: str, predicted: list[float], objective: AgentObjective | None = None) -> AgentRecord:
    return AgentRecord(agent_id="a", eps_id="e", t=0, model_version=version, updated=0.0, request_ids=(),
                       answer=None, obs=np.zeros(6, np.float32), predicted=np.array(predicted, np.float32),
                       objective=objective)


def test_batch_metrics_export_mse_reward_latency_and_violations_per_version() -> None:
    nan, limit = float("nan"), AgentObjective(name="goal", max_speed=1.0)
    records = [_record("v1", [0.0] * 6, limit), _record("v1", [0.0] * 5 + [nan]), _record("v2", [1.0] * 6), None]
    obs = np.array([[1.0] * 6, [2.0] * 5 + [9.0], [1.0] * 6, [0.0] * 6], np.float32)  # (N, S)
    steps = [Continuation(True, None)] * 3 + [Continuation(False, None)]
    # MSE over the predicted dims: 1 and 4 for v1's agents, 0 for v2's; the new agent is not scored
    assert prediction_mse(records, steps, obs) == {"v1": 2.5, "v2": 0.0}
    transitions = Transitions.build(obs=np.zeros((4, 6)), actions=np.zeros((4, 2)), rewards=np.array([1, -2, -3, .5]),
                                    new_obs=np.zeros((4, 6)), terminateds=np.zeros(4, bool),
                                    truncateds=np.zeros(4, bool), eps_id=list("abcd"), agent_id=list("abcd"),
                                    t=np.arange(4), model_version=["v1", "v1", "", "v2"])
    assert reward_totals(transitions) == {"v1": (2, 1.0, 2.0), "none": (1, 0.0, 3.0), "v2": (1, 0.5, 0.0)}

    metrics: Any = _Metrics()
    batch = PlanBatch(**empty_batch(4, 3, 6, 2), hidden=None, iterations=1, elapsed_ms=12.0, model_version="v2",
                      fallback_source="zero")
    BatchMetrics(metrics).observe_batch(batch, records, steps, obs, violation_flags(records, steps, obs),
                                        transitions)
    assert metrics.planning_latency.calls == [(0.012, {"model_version": "v2"})]
    assert metrics.prediction_mse.calls == [(2.5, {"model_version": "v1"}), (0.0, {"model_version": "v2"})]
    # v1's agent at speed sqrt(2) broke its limit of 1: counted for v1, the version that answered it
    assert metrics.violations.calls == [(1, {"kind": "observed", "constraint": "speed", "model_version": "v1"})]
    assert sorted(metrics.reward_steps.calls, key=str) == sorted([(2, {"model_version": "v1"}), (
        1, {"model_version": "none"}), (1, {"model_version": "v2"})], key=str)
    assert sorted(v for v, _ in metrics.reward_lost.calls) == [2.0, 3.0]  # no zero increments (Ray refuses them)
    assert metrics.reward_gained.calls == [(1.0, {"model_version": "v1"}), (0.5, {"model_version": "v2"})]
    assert metrics.logged.calls == [(4, None)]


# -- the rules, the configuration and the dashboard as files -------------------------------
def test_the_checked_in_files_are_rendered_from_the_thresholds_table() -> None:
    for name, text in rendered(Thresholds()).items():
        assert (HERE / name).read_text() == text, f"{name} is stale: run python -m cluster.monitoring"


@pytest.mark.parametrize("change, message", [
    ({"planning_latency_s": 0}, "planning_latency_s must be > 0"),
    ({"latency_quantile": 1.0}, "latency_quantile must be in (0, 1)"),
    ({"violation_kinds": ("seen",)}, "violation_kinds must name"),
    ({"window": "5 minutes"}, "window must be a Prometheus duration"),
    ({"reward_floors": (RewardFloor("a", -1.0),)}, "'default' exactly once"),
])
def test_thresholds_refuse_bad_values_naming_them(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Thresholds(**change)
    with pytest.raises(ValueError, match="fleet must be"):
        RewardFloor('a"b', 0.0)


def test_metric_names_are_read_from_promql() -> None:
    expr = ('histogram_quantile(0.95, sum by (fleet, le) (rate(a_bucket{fleet=~"$fleet", le!="x y"}[1m])))'
            ' > 0.03 or on (fleet) b offset 1h * 0 unless max without (WorkerId) (c:recorded) and bool d')
    assert metric_names(expr) == {"a_bucket", "b", "c:recorded", "d"}
    assert exposed_names('# HELP a x\n# TYPE a counter\na{x="1"} 2.0\nb_sum 1\n') == {"a", "b_sum"}


def test_promtool_checks_the_rules_and_the_configuration() -> None:
    promtool = _tool("promtool")
    for command in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]):
        done = subprocess.run([promtool, *command], cwd=HERE, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def _promtool_test(rules: Path) -> subprocess.CompletedProcess[str]:
    """promtool's unit tests of ``UNIT_TESTS`` against the rule file ``rules``."""
    tests = []
    for path in sorted(UNIT_TESTS.glob("*.yml")):
        spec = yaml.safe_load(path.read_text()) | {"rule_files": [str(rules)]}
        tests.append(rules.parent / path.name)
        tests[-1].write_text(yaml.safe_dump(spec))
    return subprocess.run([_tool("promtool"), "test", "rules", *map(str, tests)], capture_output=True, text=True,
                          timeout=120)


def test_promtool_unit_tests_fire_and_spare_each_alert(tmp_path: Path) -> None:
    specs = [yaml.safe_load(p.read_text()) for p in sorted(UNIT_TESTS.glob("*.yml"))]
    tested = {case["alertname"] for spec in specs for group in spec["tests"] for case in group["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in alert_rules(Thresholds())}
    (tmp_path / "alerts.yml").write_text(render_rules(Thresholds()))
    done = _promtool_test(tmp_path / "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("change", [
    {"planning_latency_s": 0.06}, {"request_latency_s": 0.25}, {"prediction_mse": 0.85},
    {"reward_floors": (RewardFloor("default", -2.0), RewardFloor("warehouse", -1.6))}, {"violations_per_hour": 2},
    {"bus_lag": 600}, {"fallback_rate": 0.2}, {"violation_kinds": ("observed", "predicted")}])
def test_the_unit_tests_fail_when_a_threshold_moves(tmp_path: Path, change: dict[str, Any]) -> None:
    (tmp_path / "alerts.yml").write_text(render_rules(dataclasses.replace(Thresholds(), **change)))
    assert _promtool_test(tmp_path / "alerts.yml").returncode != 0


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_is_grafana_json_with_a_query_per_panel() -> None:
    dashboard = json.loads(render_dashboard(Thresholds()))
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert panels and all(p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]) for p in panels)
    cells = Counter((p["gridPos"]["x"], p["gridPos"]["y"]) for p in dashboard["panels"])
    assert max(cells.values()) == 1  # no two panels drawn over each other
    mse = next(p for p in panels if p["title"] == "Prediction MSE")
    assert mse["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] == 0.5


# -- against a served app --------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(redis_server, tmp_path_factory) -> Iterator[LiveApp]:  # noqa: F811
    import ray

    from serving.deploy import shutdown_app
    from tests.cluster.monitoring_app import STATE, TELEMETRY

    os.environ["RAY_AUTH_MODE"] = "disabled"
    if ray.is_initialized():
        ray.shutdown()
    app = start_app(tmp_path_factory.mktemp("monitoring"), redis_server.url)
    yield app
    shutdown_app(STATE, TELEMETRY)
    ray.shutdown()


@pytest.mark.slow
def test_every_metric_the_rules_and_the_dashboard_read_is_in_a_live_scrape(live: LiveApp) -> None:
    rules = [rule["expr"] for rule in alert_rules(Thresholds())]
    wanted = set().union(*map(metric_names, rules + _dashboard_exprs(json.loads(render_dashboard(Thresholds())))))
    missing, deadline = wanted, time.monotonic() + 60
    with Traffic(live) as traffic:
        traffic.wait_rounds(4)
        while missing and time.monotonic() < deadline:
            time.sleep(1)  # Ray's agent exports what the workers reported at their last interval
            missing = wanted - exposed_names(live.scrape())
    assert not missing, f"not in the live scrape: {sorted(missing)}"


@pytest.mark.slow
def test_a_real_prometheus_fires_the_prediction_error_alert_on_the_served_app(live: LiveApp, tmp_path: Path) -> None:
    prometheus = _tool("prometheus")
    from actors.ports import free_port

    fast = Thresholds(window="15s", hold="0s", evaluation="1s", reward_window="15s")
    (tmp_path / "alerts.yml").write_text(render_rules(fast))
    fleet = Fleet("test", service_discovery=None, targets=(f"127.0.0.1:{live.metrics_port}",))
    (tmp_path / "prometheus.yml").write_text(prometheus_config([fleet], interval="1s", evaluation="1s"))
    port = free_port()
    with open(tmp_path / "prometheus.log", "w") as log, Traffic(live) as traffic:
        server = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'data'}",
                                   f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        try:
            firing = _wait_firing(f"http://127.0.0.1:{port}", "FleetwmPredictionErrorHigh", traffic, 60)
        finally:
            server.terminate()
            server.wait(20)
    assert firing, (tmp_path / "prometheus.log").read_text()[-2000:]
    served = requests.get(f"{live.url}/healthz", timeout=10).json()["model_version"]
    assert {(a["labels"]["fleet"], a["labels"]["model_version"]) for a in firing} == {("test", served)}
    assert all(float(a["value"]) > 0.5 for a in firing)


def _wait_firing(url: str, alert: str, traffic: Traffic, timeout_s: float) -> list[dict[str, Any]]:
    """The firing instances of ``alert`` once there are any (empty after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not traffic.errors:
        time.sleep(1)
        try:
            alerts = requests.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        except requests.RequestException:
            continue  # not listening yet
        firing = [a for a in alerts if a["labels"]["alertname"] == alert and a["state"] == "firing"]
        if firing:
            return firing
    assert not traffic.errors, traffic.errors[:3]
    return []
