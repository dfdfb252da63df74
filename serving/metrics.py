"""The fleet endpoint's metrics, exported through Ray's metrics agent (Prometheus format, Ray dashboard).

Names carry the ``fleetwm_`` prefix; Ray adds ``ray_`` when it exports them.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ray.util import metrics

if TYPE_CHECKING:
    from actors.telemetry_config import LoggerStats

_LATENCY_S = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5]
_BATCH = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
_ERROR = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
_MSE = [0.001, 0.01, 0.03, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]
NO_VERSION = "none"
"""The ``model_version`` tag of a reward earned by an action of the client's own (no model's answer)."""


class ServingMetrics:
    """The endpoint's metric objects; a process uses one set, ``serving_metrics()``."""

    def __init__(self) -> None:
        self.latency = metrics.Histogram("fleetwm_request_latency_seconds", "Time to answer a plan request (s).",
                                         boundaries=_LATENCY_S, tag_keys=("route",))
        self.batch_size = metrics.Histogram("fleetwm_batch_size", "Requests merged into one planner call.",
                                            boundaries=_BATCH)
        self.plans = metrics.Counter("fleetwm_plans_total", "Agent decisions planned.", tag_keys=("model_version",))
        self.fallbacks = metrics.Counter("fleetwm_fallbacks_total", "Decisions taken by the fallback policy, by "
                                         "reason ('deadline', 'uncertainty' or 'error') and by what gave its action "
                                         "('policy', 'zero', 'brake' or 'plan').",
                                         tag_keys=("model_version", "reason", "by"))
        self.shield = metrics.Counter("fleetwm_shield_interventions_total", "Actions the shield replaced, by the "
                                      "constraint they were predicted to violate ('no_fly_zone', 'state_box', "
                                      "'speed').", tag_keys=("model_version", "constraint"))
        self.violations = metrics.Counter("fleetwm_violations_total", "Constraint violations: 'predicted' (an "
                                          "answer's margin < 0 after the shield: no safe alternative) or "
                                          "'observed' (an agent's next observation inside its previous request's "
                                          "zones, outside its box or over its speed limit), by the version that "
                                          "answered.", tag_keys=("kind", "constraint", "model_version"))
        self.replays = metrics.Counter("fleetwm_replays_total", "Retried requests answered from the first answer.")
        self.bad_requests = metrics.Counter("fleetwm_bad_requests_total", "Requests answered 4xx.",
                                            tag_keys=("status",))
        self.logged = metrics.Counter("fleetwm_transitions_logged_total", "Transitions sent to the telemetry log.")
        self.disagreement = metrics.Gauge("fleetwm_ensemble_disagreement",
                                          "Mean ensemble disagreement along the chosen plans of the last batch.",
                                          tag_keys=("model_version",))
        self.version = metrics.Gauge("fleetwm_served_model_version", "1 for the model version being served.",
                                     tag_keys=("model_version", "role"))
        self.prediction_error = metrics.Histogram("fleetwm_prediction_error",
                                                  "One-step prediction error on served transitions, mean per batch "
                                                  "(production's and the shadow's alike).",
                                                  boundaries=_ERROR, tag_keys=("model_version", "role"))
        self.planning_latency = metrics.Histogram("fleetwm_planning_latency_seconds",
                                                  "Wall time of one planner call for a whole batch, as the planner "
                                                  "deployment measures it (s).", boundaries=_LATENCY_S,
                                                  tag_keys=("model_version",))
        self.prediction_mse = metrics.Histogram("fleetwm_prediction_mse",
                                                "One-step dynamics prediction MSE (mean over the predicted dims) "
                                                "of served transitions, mean per batch and version.",
                                                boundaries=_MSE, tag_keys=("model_version",))
        # A histogram's sum of rewards can fall, which Prometheus's rate() reads as a counter reset: the rewards'
        # positive and negative parts are two counters, and their rates over the steps' give the mean.
        self.reward_steps = metrics.Counter("fleetwm_reward_steps_total", "Served steps whose reward the agents "
                                            f"reported, by the version that acted ('{NO_VERSION}': the client's "
                                            "own action).", tag_keys=("model_version",))
        self.reward_gained = metrics.Counter("fleetwm_reward_gained_total", "Sum of the positive rewards of "
                                             "those steps.", tag_keys=("model_version",))
        self.reward_lost = metrics.Counter("fleetwm_reward_lost_total", "Sum of minus the negative rewards of "
                                           "those steps.", tag_keys=("model_version",))
        self.drift_retrains = metrics.Counter("fleetwm_drift_retrains_total", "Retrains asked for because the "
                                              "production version's prediction MSE stayed high (learners.drift), "
                                              "by outcome: 'started', refused ('busy', 'rate_limited', "
                                              "'not_production'), 'skipped' (no retrain scheduler) or 'failed'.",
                                              tag_keys=("model_version", "outcome"))
        self.ab_share = metrics.Gauge("fleetwm_ab_share", "Share of the agents the live A/B test's candidate "
                                      "version serves (0 once its test ended); the arms' series are those of "
                                      "their model_version tags.", tag_keys=("model_version",))
        self.shadow_action_diff = metrics.Gauge("fleetwm_shadow_action_difference",
                                                "Mean |shadow action - production action| of the last batch.")
        self.telemetry_buffered = metrics.Gauge("fleetwm_telemetry_buffered_rows",
                                                "Transitions the telemetry logger holds, not yet written.")
        self.telemetry_dropped = metrics.Gauge("fleetwm_telemetry_dropped_rows",
                                               "Transitions the telemetry logger dropped unwritten, in total.")
        self.telemetry_failing = metrics.Gauge("fleetwm_telemetry_failing",
                                               "1 while telemetry cannot be written or its logger cannot be "
                                               "reached, else 0.")

        self.bus_lag = metrics.Gauge("fleetwm_bus_lag", "Plan requests in the request stream not yet read by the "
                                     "stream consumers (XINFO GROUPS lag).")
        self.bus_pending = metrics.Gauge("fleetwm_bus_pending", "Plan requests read by a stream consumer and not "
                                         "yet acknowledged (being planned, or held by a dead consumer).")
        self.bus_dead_letters = metrics.Counter("fleetwm_bus_dead_letters_total",
                                                "Plan request entries dead-lettered (unreadable or invalid).")
        self.bus_latency = metrics.Histogram("fleetwm_bus_latency_seconds", "Time from a plan request's entry to "
                                             "its reply's, on Redis's clock (s).", boundaries=_LATENCY_S)

    def report_bus(self, lag: int | None, pending: int | None) -> None:
        """Export the request stream's consumer group state (None: unknown, the gauge keeps its value)."""
        if lag is not None:
            self.bus_lag.set(lag)
        if pending is not None:
            self.bus_pending.set(pending)

    def report_telemetry(self, stats: LoggerStats | None) -> None:
        """Export the telemetry logger's state: its ``LoggerStats``, or None when it could not be reached
        (failing; its counts keep their last values)."""
        if stats is None:
            self.telemetry_failing.set(1)
            return
        self.telemetry_buffered.set(stats.buffered)
        self.telemetry_dropped.set(stats.dropped)
        self.telemetry_failing.set(int(stats.last_error is not None))


@functools.cache
def serving_metrics() -> ServingMetrics:
    """The process's one set of metric objects (Ray aggregates them across replicas)."""
    return ServingMetrics()
