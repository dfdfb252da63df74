"""Prometheus alert rules on the article's thresholds, rendered from one table (``Thresholds``).

Every threshold, window and hold time is a field of ``Thresholds``; ``alerts.yml`` beside this module is
``render_rules(Thresholds())`` (``python -m cluster.monitoring`` writes it again after the table changes, and a
test keeps the two equal). Metric names are the app's (``serving.metrics``) as Ray exports them: with its
``ray_`` prefix, one series per worker process (labels ``WorkerId``, ``NodeAddress``, ...), so every rule sums
over the workers. A fleet is the ``fleet`` label its scrape job gives its targets (``monitoring.prometheus``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from learners.settings import PREDICTION_MSE_LIMIT

RAY_PREFIX = "ray_"
"""What Ray's metrics agent puts before an application metric's name."""
DEFAULT_FLEET = "default"
"""The reward floor that applies to every fleet no other floor names."""
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d))+$")


def ray_metric(name: str) -> str:
    """An app metric's name in Prometheus (``fleetwm_bus_lag`` -> ``ray_fleetwm_bus_lag``)."""
    return RAY_PREFIX + name


@dataclass(frozen=True)
class RewardFloor:
    """The lowest average reward a fleet may earn before an alert (per model version)."""

    fleet: str
    """The fleet's ``fleet`` label; ``DEFAULT_FLEET`` for every fleet no other floor names."""
    minimum: float
    """Mean reward per served step below which the alert fires (the env's scale: Nav2D's is -distance)."""

    def __post_init__(self) -> None:
        if not _NAME.match(self.fleet):
            raise ValueError(f"fleet must be 1-64 letters, digits, '_' or '-', got {self.fleet!r}")


@dataclass(frozen=True)
class Thresholds:
    """The alerts' thresholds, in one place; validated at construction."""

    planning_latency_s: float = 0.03
    """Planning latency (one planner call, as the server measures it) above which planning eats a 10 Hz
    control period's compute budget: the article's 30 ms."""
    request_latency_s: float = 0.1
    """End-to-end latency (HTTP request, or bus request to reply) above one 10 Hz control period."""
    latency_quantile: float = 0.95
    """The latency quantile compared with the latency thresholds."""
    prediction_mse: float = PREDICTION_MSE_LIMIT
    """One-step dynamics prediction MSE of served transitions above which the model has drifted (article)."""
    reward_floors: tuple[RewardFloor, ...] = (RewardFloor(DEFAULT_FLEET, -2.0), RewardFloor("warehouse", -1.0))
    """Per fleet, the lowest acceptable average reward; exactly one ``DEFAULT_FLEET`` entry."""
    violations_per_hour: float = 1.0
    """Safety violations in the last hour above which the alert fires (article: more than one per hour)."""
    violation_kinds: tuple[str, ...] = ("observed",)
    """Which ``fleetwm_violations_total`` kinds count: 'observed' (an agent broke its constraints) and/or
    'predicted' (an answer predicted to break them, no safe alternative)."""
    bus_lag: float = 100.0
    """Plan requests waiting unread in the fleet bus's request stream."""
    fallback_rate: float = 0.05
    """Share of decisions taken by the fallback policy."""
    window: str = "5m"
    """Range over which rates, averages and quantiles are taken."""
    hold: str = "5m"
    """How long a condition must last before its alert fires (``for:``); the violation count's is ``0s``."""
    evaluation: str = "30s"
    """How often the rule group is evaluated."""
    reward_window: str = "15m"
    """Range of the average reward (longer: rewards are noisy step to step)."""

    def __post_init__(self) -> None:
        positive = {"planning_latency_s": self.planning_latency_s, "request_latency_s": self.request_latency_s,
                    "prediction_mse": self.prediction_mse, "bus_lag": self.bus_lag}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not 0 < self.latency_quantile < 1:
            raise ValueError(f"latency_quantile must be in (0, 1), got {self.latency_quantile!r}")
        if not 0 < self.fallback_rate <= 1:
            raise ValueError(f"fallback_rate must be in (0, 1], got {self.fallback_rate!r}")
        if not self.violations_per_hour >= 0:
            raise ValueError(f"violations_per_hour must be >= 0, got {self.violations_per_hour!r}")
        kinds = set(self.violation_kinds)
        if not kinds or not kinds <= {"observed", "predicted"}:
            raise ValueError(f"violation_kinds must name 'observed' and/or 'predicted', got {self.violation_kinds!r}")
        for name in ("window", "hold", "evaluation", "reward_window"):
            if not _DURATION.match(getattr(self, name)):
                raise ValueError(f"{name} must be a Prometheus duration such as '30s' or '5m', "
                                 f"got {getattr(self, name)!r}")
        fleets = [f.fleet for f in self.reward_floors]
        if fleets.count(DEFAULT_FLEET) != 1 or len(set(fleets)) != len(fleets):
            raise ValueError(f"reward_floors must name each fleet once and {DEFAULT_FLEET!r} exactly once, "
                             f"got {fleets}")


def _mean(name: str, window: str, by: str, selector: str = "") -> str:
    """Average of a histogram's observations over ``window``: rate of its sum over rate of its count."""
    return (f"sum by ({by}) (rate({ray_metric(name)}_sum{selector}[{window}]))"
            f" / sum by ({by}) (rate({ray_metric(name)}_count{selector}[{window}]))")


def reward_mean(window: str, by: str, selector: str = "") -> str:
    """Mean reward per served step over ``window``: (gained - lost) / steps, from the app's three counters.

    A version that never earned a positive (or a negative) reward has no such series: its part counts as 0."""
    def rate(name: str) -> str:
        return f"sum by ({by}) (rate({ray_metric(name)}{selector}[{window}]))"

    steps = rate("fleetwm_reward_steps_total")
    gained, lost = (f"({rate(name)} or 0 * {steps})" for name in ("fleetwm_reward_gained_total",
                                                                     "fleetwm_reward_lost_total"))
    return f"({gained} - {lost}) / {steps}"


def _quantile(q: float, name: str, window: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({ray_metric(name)}_bucket[{window}])))"


def _alert(name: str, expr: str, hold: str, summary: str, severity: str = "warning") -> dict[str, Any]:
    return {"alert": name, "expr": expr, "for": hold, "labels": {"severity": severity},
            "annotations": {"summary": summary}}


def alert_rules(t: Thresholds) -> list[dict[str, Any]]:
    """The alert rules, each with its threshold from ``t``."""
    q, w = t.latency_quantile, t.window
    kinds = "|".join(sorted(t.violation_kinds))
    violations = f'{ray_metric("fleetwm_violations_total")}{{kind=~"{kinds}"}}'
    return [
        _alert("FleetwmPlanningLatencyHigh",
               f"{_quantile(q, 'fleetwm_planning_latency_seconds', w, 'fleet, model_version')}"
               f" > {t.planning_latency_s}",
               t.hold, f"p{q * 100:g} planning latency of {{{{ $labels.model_version }}}} in fleet "
                       f"{{{{ $labels.fleet }}}} is over {t.planning_latency_s * 1000:g} ms (10 Hz control)"),
        _alert("FleetwmRequestLatencyHigh",
               f"{_quantile(q, 'fleetwm_request_latency_seconds', w, 'fleet, route')} > {t.request_latency_s}",
               t.hold, f"p{q * 100:g} end-to-end latency of {{{{ $labels.route }}}} requests in fleet "
                       f"{{{{ $labels.fleet }}}} is over {t.request_latency_s * 1000:g} ms"),
        _alert("FleetwmBusLatencyHigh",
               f"{_quantile(q, 'fleetwm_bus_latency_seconds', w, 'fleet')} > {t.request_latency_s}",
               t.hold, f"p{q * 100:g} fleet bus request-to-reply latency in fleet {{{{ $labels.fleet }}}} is over "
                       f"{t.request_latency_s * 1000:g} ms"),
        _alert("FleetwmPredictionErrorHigh",
               f"{_mean('fleetwm_prediction_mse', w, 'fleet, model_version')} > {t.prediction_mse}",
               t.hold, f"dynamics prediction MSE of {{{{ $labels.model_version }}}} in fleet {{{{ $labels.fleet }}}} "
                       f"is over {t.prediction_mse:g}: the model has drifted from the fleet", "critical"),
        *_reward_rules(t),
        _alert("FleetwmSafetyViolations",
               # The count since an hour ago, a series that is newer counting from 0: increase() would miss a
               # worker's first violation (Ray exports a counter from its first increment).
               f"sum by (fleet, model_version) ({violations} - ({violations} offset 1h or {violations} * 0))"
               f" > {t.violations_per_hour:g}",
               "0s", f"more than {t.violations_per_hour:g} safety violation(s) ({kinds}) in the last hour under "
                     "{{ $labels.model_version }} in fleet {{ $labels.fleet }}", "critical"),
        _alert("FleetwmBusLagHigh", f"max by (fleet) ({ray_metric('fleetwm_bus_lag')}) > {t.bus_lag:g}", t.hold,
               f"more than {t.bus_lag:g} plan requests wait unread in fleet {{{{ $labels.fleet }}}}'s bus"),
        _alert("FleetwmFallbackRateHigh",
               f"sum by (fleet, model_version) (rate({ray_metric('fleetwm_fallbacks_total')}[{w}]))"
               f" / sum by (fleet, model_version) (rate({ray_metric('fleetwm_plans_total')}[{w}]))"
               f" > {t.fallback_rate:g}",
               t.hold, f"over {t.fallback_rate * 100:g}% of {{{{ $labels.model_version }}}}'s decisions in fleet "
                       f"{{{{ $labels.fleet }}}} are the fallback's"),
    ]


def _reward_rules(t: Thresholds) -> list[dict[str, Any]]:
    """One rule per reward floor; the default's covers every fleet the others do not name."""
    named = sorted(f.fleet for f in t.reward_floors if f.fleet != DEFAULT_FLEET)
    out = []
    for floor in sorted(t.reward_floors, key=lambda f: f.fleet):
        selector = (f'{{fleet="{floor.fleet}"}}' if floor.fleet != DEFAULT_FLEET
                    else f'{{fleet!~"{"|".join(named)}"}}' if named else "")
        expr = f"{reward_mean(t.reward_window, 'fleet, model_version', selector)} < {floor.minimum:g}"
        alert = _alert("FleetwmRewardLow", expr, t.hold,
                       f"average reward of {{{{ $labels.model_version }}}} in fleet {{{{ $labels.fleet }}}} is below "
                       f"{floor.minimum:g}")
        alert["labels"]["floor"] = floor.fleet
        out.append(alert)
    return out


def render_rules(t: Thresholds) -> str:
    """The rule file (``alerts.yml``) for ``t``, as YAML text."""
    group = {"name": "fleetwm", "interval": t.evaluation, "rules": alert_rules(t)}
    header = "# Generated by `python -m cluster.monitoring` from cluster/monitoring/rules.py's Thresholds: edit them.\n"
    return header + yaml.safe_dump({"groups": [group]}, sort_keys=False, width=1000)
