"""The Grafana dashboard over fleetwm's metrics and Ray's, rendered from the alert thresholds.

``grafana/fleetwm.json`` beside this module is ``render_dashboard(Thresholds())``: each panel that an alert
watches draws that alert's threshold (from the same ``Thresholds``). The ``fleet`` variable selects fleets
(the label of their scrape job, ``monitoring.prometheus``); ``datasource`` picks the Prometheus.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.monitoring.rules import Thresholds, ray_metric, reward_mean

_FLEET = '{fleet=~"$fleet"}'
_WIDTH, _HEIGHT = 12, 8


def _rate(name: str, by: str, selector: str = _FLEET) -> str:
    return f"sum by ({by}) (rate({ray_metric(name)}{selector}[$__rate_interval]))"


def _quantile(q: float, name: str, by: str) -> str:
    return f"histogram_quantile({q}, {_rate(name + '_bucket', by + ', le')})"


def _mean(name: str, by: str) -> str:
    return f"{_rate(name + '_sum', by)} / {_rate(name + '_count', by)}"


def _panel(title: str, targets: list[tuple[str, str]], unit: str, threshold: float | None = None,
           description: str = "") -> dict[str, Any]:
    """A time series panel: ``targets`` as (PromQL, legend); ``threshold`` drawn as a red line."""
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if threshold is not None:
        steps.append({"color": "red", "value": threshold})
    return {"type": "timeseries", "title": title, "description": description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps},
                                         "custom": {"thresholdsStyle": {"mode": "line" if threshold is not None
                                                                        else "off"}}},
                            "overrides": []},
            "targets": [{"expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
                        for i, (expr, legend) in enumerate(targets)]}


def fleet_panels(t: Thresholds) -> list[dict[str, Any]]:
    """fleetwm's own metrics: the alerts' quantities first, then what explains them."""
    q, v = t.latency_quantile, "model_version"
    violations = ray_metric("fleetwm_violations_total")
    return [
        _panel(f"Planning latency p{q * 100:g}",
               [(_quantile(q, "fleetwm_planning_latency_seconds", v), "{{model_version}}")],
               "s", t.planning_latency_s, "One planner call for a batch, as the planner deployment measures it."),
        _panel(f"End-to-end latency p{q * 100:g}",
               [(_quantile(q, "fleetwm_request_latency_seconds", "route"), "HTTP {{route}}"),
                (_quantile(q, "fleetwm_bus_latency_seconds", "fleet"), "bus")], "s", t.request_latency_s),
        _panel("Prediction MSE", [(_mean("fleetwm_prediction_mse", v), "{{model_version}}")], "none",
               t.prediction_mse, "One-step dynamics prediction MSE of served transitions."),
        _panel("Prediction error (L2)", [(_mean("fleetwm_prediction_error", f"{v}, role"),
                                          "{{model_version}} {{role}}")], "none"),
        _panel("Average reward", [(reward_mean("$__rate_interval", v, _FLEET), "{{model_version}}")], "none",
               description="Per version; each fleet's floor is in the FleetwmRewardLow alerts."),
        _panel("Safety violations per hour",
               [(f"sum by (kind, constraint) (increase({violations}{_FLEET}[1h]))", "{{kind}} {{constraint}}")],
               "none", t.violations_per_hour),
        _panel("Fallback rate", [(f"{_rate('fleetwm_fallbacks_total', v)} / {_rate('fleetwm_plans_total', v)}",
                                  "{{model_version}}")], "percentunit", t.fallback_rate),
        _panel("Fallbacks and shield interventions per second",
               [(_rate("fleetwm_fallbacks_total", "reason, by"), "fallback {{reason}} ({{by}})"),
                (_rate("fleetwm_shield_interventions_total", "constraint"), "shield {{constraint}}")], "ops"),
        _panel("Fleet bus", [(f"max({ray_metric('fleetwm_bus_lag')}{_FLEET})", "lag"),
                             (f"max({ray_metric('fleetwm_bus_pending')}{_FLEET})", "pending")], "none", t.bus_lag),
        _panel("Decisions per second and batch size",
               [(_rate("fleetwm_plans_total", v), "plans/s {{model_version}}"),
                (_mean("fleetwm_batch_size", "fleet"), "mean batch")], "none"),
        _panel("Ensemble disagreement", [(f"avg by ({v}) ({ray_metric('fleetwm_ensemble_disagreement')}{_FLEET})",
                                          "{{model_version}}")], "none"),
        _panel("Served version", [(f"max by ({v}, role) ({ray_metric('fleetwm_served_model_version')}{_FLEET})",
                                   "{{role}} {{model_version}}")], "none"),
        _panel("Telemetry", [(f"sum({ray_metric('fleetwm_telemetry_buffered_rows')}{_FLEET})", "buffered"),
                             (f"sum({ray_metric('fleetwm_telemetry_dropped_rows')}{_FLEET})", "dropped"),
                             (f"max({ray_metric('fleetwm_telemetry_failing')}{_FLEET})", "failing"),
                             (_rate("fleetwm_transitions_logged_total", "fleet"), "logged/s")], "none"),
    ]


def ray_panels() -> list[dict[str, Any]]:
    """Ray's and Serve's metrics that explain fleetwm's: load, queues, resources."""
    return [
        _panel("Serve requests per second", [(_rate("serve_deployment_request_counter_total", "deployment"),
                                              "{{deployment}}")], "reqps"),
        _panel("Serve processing latency p95",
               [(_quantile(0.95, "serve_deployment_processing_latency_ms", "deployment"), "{{deployment}}")], "ms"),
        _panel("Serve ongoing requests", [(f"sum by (deployment) ({ray_metric('serve_replica_processing_queries')}"
                                           f"{_FLEET})", "{{deployment}}")], "none"),
        _panel("Node CPU and memory", [(f"avg by (ip) ({ray_metric('node_cpu_utilization')}{_FLEET}) / 100",
                                        "CPU {{ip}}"),
                                       (f"sum by (ip) ({ray_metric('node_mem_used')}{_FLEET}) / sum by "
                                        f"(ip) ({ray_metric('node_mem_total')}{_FLEET})", "memory {{ip}}")],
               "percentunit"),
        _panel("Object store used", [(f"sum by (NodeAddress) ({ray_metric('object_store_used_memory')}{_FLEET})",
                                      "{{NodeAddress}}")], "bytes"),
    ]


def _row(title: str, y: int) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"x": 0, "y": y, "w": 2 * _WIDTH, "h": 1}}


def render_dashboard(t: Thresholds) -> str:
    """The dashboard as Grafana JSON text: a fleetwm row, then a Ray row, panels two abreast."""
    panels, y = [], 0
    for title, group in (("fleetwm", fleet_panels(t)), ("Ray", ray_panels())):
        panels.append(_row(title, y))
        y += 1
        for i, panel in enumerate(group):
            panel["gridPos"] = {"x": (i % 2) * _WIDTH, "y": y + (i // 2) * _HEIGHT, "w": _WIDTH, "h": _HEIGHT}
            panels.append(panel)
        y += -(-len(group) // 2) * _HEIGHT
    for i, panel in enumerate(panels):
        panel["id"] = i + 1
    fleet_var = {"name": "fleet", "type": "query", "label": "Fleet", "includeAll": True, "multi": True,
                 "allValue": ".*", "current": {"text": "All", "value": "$__all"},
                 "datasource": {"type": "prometheus", "uid": "${datasource}"},
                 "query": {"query": f"label_values({ray_metric('fleetwm_plans_total')}, fleet)", "refId": "fleet"},
                 "definition": f"label_values({ray_metric('fleetwm_plans_total')}, fleet)", "refresh": 2}
    datasource = {"name": "datasource", "type": "datasource", "label": "Prometheus", "query": "prometheus"}
    dashboard = {"uid": "fleetwm", "title": "fleetwm fleet", "tags": ["fleetwm", "ray"], "timezone": "utc",
                 "schemaVersion": 39, "version": 1, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
                 "templating": {"list": [datasource, fleet_var]}, "panels": panels}
    return json.dumps(dashboard, indent=2) + "\n"
