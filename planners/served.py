"""What a served planner takes and answers: its settings, the per-agent constraints, the batch it returns.

Data that crosses from ``planners.service.FleetPlanner`` to the serving layer (numpy throughout), kept
apart from the planner that produces it.

Shapes: ``N`` agents, ``H`` horizon, ``S`` state, ``A`` action, ``Z`` zones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from planners import PlanConfig, resolved_settings, shift_plan
from planners.base import Fallback, PlanResult
from planners.config import DEFAULT_PLANNER, LATENT_PLAN, SHIELD_HORIZON, FleetPlanConfig
from planners.objectives import ACTION_HIGH, ACTION_LOW, BOX, MAX_SPEED, ZONES, Params
from worldmodel.config import config_from_dict
from worldmodel.envs.warehouse import DEFAULT_ROBOTS
from worldmodel.reward_artifact import check_reward_version

CONSTRAINT_DIMS = {ZONES: 3, BOX: 3, MAX_SPEED: 1, ACTION_LOW: 2, ACTION_HIGH: 2}
"""The constraints ``FleetPlanner.plan`` takes (``planners.objectives`` keys) and their arrays' ndim with
the agent axis N first: ZONES (N, Z, 3), BOX (N, 2, 2), MAX_SPEED (N,), ACTION_LOW/HIGH (N, A)."""
STATE_CONSTRAINTS = (ZONES, BOX, MAX_SPEED)
"""Constraints on the states: Nav2D models only (the action bounds apply to any model)."""


@dataclass(frozen=True)
class ServiceConfig:
    """How a served model plans: by default ``PlanConfig``'s and CEM's own defaults (one place each)."""

    planner: str = DEFAULT_PLANNER
    """'cem', 'mppi', 'gradient' or 'shooting'."""
    plan: PlanConfig = PlanConfig()
    """Planner settings shared by every planner."""
    settings: dict[str, Any] | None = None
    """The planner's own settings (``make_planner``); absent fields (or None) keep its config's defaults."""
    shield: bool = True
    """Check every answer of a Nav2D model against its request's constraints (zones, box, speed limit)
    with the ensemble's worst member, replacing an action predicted to violate them. On by default: a
    request without constraints passes it unchanged, at the cost of a few short rollouts per batch."""
    shield_horizon: int = SHIELD_HORIZON
    """Steps the shield checks ahead (see ``planners.config.SHIELD_HORIZON``)."""
    fleet: FleetPlanConfig = FleetPlanConfig()
    """Warehouse fleet models: the floor planner's settings (``plan`` is the lone agents')."""
    latent: PlanConfig = LATENT_PLAN
    """Camera (latent) models: their planner's settings (``plan`` is vector models')."""
    floor_robots: int = DEFAULT_ROBOTS
    """Warehouse fleet models: the served floor is ``layout_for(floor_robots)``."""
    reward_model: str | None = None
    """The fleet's reward model ("r1.2.0", registered in the served registry's ``rewards/``): the learned
    objective plans with it unless a request names another; None: the world model's own reward."""

    @property
    def planner_settings(self) -> dict[str, Any]:
        """The planner's own settings, resolved: every field of its config, defaults filled in."""
        return resolved_settings(self.planner, self.settings)

    def to_dict(self) -> dict[str, Any]:
        return {"planner": self.planner, "plan": dataclasses.asdict(self.plan), "settings": self.planner_settings,
                "shield": self.shield, "shield_horizon": self.shield_horizon, "fleet": dataclasses.asdict(self.fleet),
                "latent": dataclasses.asdict(self.latent), "floor_robots": self.floor_robots,
                "reward_model": self.reward_model}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServiceConfig":
        """From ``to_dict``'s form; missing keys keep their defaults, unknown keys are an error."""
        known = ("planner", "plan", "settings", "shield", "shield_horizon", "fleet", "latent", "floor_robots",
                 "reward_model")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown planner service setting(s) {unknown}; known: {', '.join(known)}")
        plan = cls.plan if "plan" not in data else config_from_dict(PlanConfig, {**dataclasses.asdict(cls.plan),
                                                                                  **data["plan"]})
        fleet = config_from_dict(FleetPlanConfig, {**dataclasses.asdict(cls.fleet), **data.get("fleet", {})})
        latent = config_from_dict(PlanConfig, {**dataclasses.asdict(cls.latent), **data.get("latent", {})})
        settings, shield = data.get("settings"), data.get("shield", cls.shield)
        if not isinstance(shield, bool):
            raise ValueError(f"shield must be true or false, got {shield!r}")
        return cls(planner=data.get("planner", cls.planner), plan=plan,
                   settings=None if settings is None else dict(settings), shield=shield,
                   shield_horizon=data.get("shield_horizon", cls.shield_horizon), fleet=fleet, latent=latent,
                   floor_robots=data.get("floor_robots", cls.floor_robots),
                   reward_model=data.get("reward_model", cls.reward_model))

    def __post_init__(self) -> None:
        if not isinstance(self.shield_horizon, int) or isinstance(self.shield_horizon, bool) or \
                self.shield_horizon < 1:
            raise ValueError(f"shield_horizon must be an integer >= 1, got {self.shield_horizon!r}")
        if not isinstance(self.floor_robots, int) or isinstance(self.floor_robots, bool) or self.floor_robots < 1:
            raise ValueError(f"floor_robots must be an integer >= 1, got {self.floor_robots!r}")
        if self.reward_model is not None:
            check_reward_version(self.reward_model)


@dataclass(frozen=True)
class PlanBatch:
    """One served planner call's answer for N agents, numpy throughout (what crosses to the ingress).

    Attributes:
        actions: (N, A) the actions to take now.
        warm_start: (N, H, A) the chosen plans shifted by one step: the next call's warm starts.
        trajectory: (N, H+1, S) predicted mean states along the chosen plans, starting at obs.
        disagreement: (N,) mean ensemble disagreement along each chosen plan.
        fallback_reason: (N,) int8 ``planners.base.Fallback`` codes (0 where the plan acted).
        expected_return: (N,) predicted return of each chosen plan (NaN for policy-mode rows).
        hidden: (N, E*Hd) recurrent models' states (every member's) after this step's observation and action, else None.
        iterations: optimisation rounds completed (the fewest over the objective kinds planned).
        elapsed_ms: wall time of the call.
        model_version: the version that planned.
        decision: (N,) int8 ``planners.base.Decision`` codes: planned, fallback, shielded or policy.
        shield: (N,) int8 ``planners.constraints.Constraint`` codes: what the shield kept the action from
            violating (0 where it did not act).
        margin: (N,) worst predicted constraint margin of the answered action over the shield's horizon
            (+inf without a shield or without constraints; negative: a predicted violation).
        fallback_source: who the fallback is: 'policy' (the model's policy), 'zero' (the zero action), 'brake'
            (a warehouse robot without a policy stops) or 'plan' (a camera agent late for its deadline goes on
            with its previous plan, the zero action without one or for another reason; ``BasePlanner``'s
            ``hold_plan``); ``fallback_by`` says it per agent.
        reward_models: per agent, the reward model version its plan was scored with, None where the world
            model's own reward was (or no learned reward: 'goal', policy mode); None: the model's own for all.

    Policy-mode rows (``Decision.POLICY``) predict nothing beyond the shield's check: their warm start
    holds the action, their trajectory holds the observation, their disagreement is 0.
    """

    actions: np.ndarray
    warm_start: np.ndarray
    trajectory: np.ndarray
    disagreement: np.ndarray
    fallback_reason: np.ndarray
    expected_return: np.ndarray
    hidden: np.ndarray | None
    iterations: int
    elapsed_ms: float
    model_version: str
    decision: np.ndarray
    shield: np.ndarray
    margin: np.ndarray
    fallback_source: str
    reward_models: list[str | None] | None = None

    @property
    def fallback(self) -> np.ndarray:
        """(N,) True where the fallback policy acted."""
        return self.fallback_reason != Fallback.NONE

    def reasons(self) -> list[str | None]:
        """Per agent, why the fallback acted: 'deadline', 'uncertainty', 'error', or None."""
        return [Fallback(int(code)).reason for code in self.fallback_reason]

    def fallback_by(self) -> list[str | None]:
        """Per agent, what gave the fallback's action (None where it did not act): ``fallback_source``, but 'zero'
        for a fallback of a 'plan' planner for another reason than the deadline (``BasePlanner``'s ``hold_plan``)."""
        return [None if reason is None else "zero" if self.fallback_source == "plan" and reason != "deadline"
                else self.fallback_source for reason in self.reasons()]


def constraint_params(constraints: dict[str, np.ndarray] | None, n: int, device: torch.device,
                      states: bool) -> Params:
    """Per-agent constraint arrays (``CONSTRAINT_DIMS``, N first) as planner params on ``device``.

    Args:
        states: whether the model takes ``STATE_CONSTRAINTS`` (Nav2D); one given to another model is an error.
    """
    unknown = sorted(set(constraints or {}) - set(CONSTRAINT_DIMS))
    if unknown:
        raise ValueError(f"unknown constraint(s) {unknown}; known: {', '.join(CONSTRAINT_DIMS)}")
    params: Params = {}
    for key, value in (constraints or {}).items():
        if key in STATE_CONSTRAINTS and not states:
            raise ValueError(f"constraint {key!r} exists for models with positions (Nav2D) only")
        array = np.asarray(value, np.float32)
        if array.ndim != CONSTRAINT_DIMS[key] or len(array) != n:
            raise ValueError(f"constraint {key!r} must have {CONSTRAINT_DIMS[key]} dims with N = {n} first, "
                             f"got {array.shape}")
        params[key] = torch.as_tensor(array, device=device)
    return params


def one_row(key: str, value: np.ndarray) -> np.ndarray:
    """One agent's constraint array with the leading N = 1 axis (added when it is missing)."""
    array = np.asarray(value, np.float32)
    if key in CONSTRAINT_DIMS and array.ndim == CONSTRAINT_DIMS[key] - 1:
        return array[None]
    return array


def empty_batch(n: int, h: int, s: int, a: int) -> dict[str, np.ndarray]:
    """The arrays of a ``PlanBatch`` for N agents, before any group of them is decided (``fill``)."""
    return {"actions": np.zeros((n, a), np.float32), "warm_start": np.zeros((n, h, a), np.float32),
            "trajectory": np.zeros((n, h + 1, s), np.float32), "disagreement": np.zeros(n, np.float32),
            "fallback_reason": np.zeros(n, np.int8), "expected_return": np.zeros(n, np.float32),
            "decision": np.zeros(n, np.int8), "shield": np.zeros(n, np.int8),
            "margin": np.full(n, np.inf, np.float32)}


def fill(out: dict[str, np.ndarray], rows: np.ndarray, result: PlanResult) -> None:
    """Write one group's decision into the batch's arrays at ``rows``."""
    out["actions"][rows] = result.actions.cpu().numpy()
    out["warm_start"][rows] = shift_plan(result.plan).cpu().numpy()
    out["trajectory"][rows] = result.trajectory.cpu().numpy()
    out["disagreement"][rows] = result.disagreement.mean(1).cpu().numpy()
    out["fallback_reason"][rows] = result.fallback_reason.cpu().numpy()
    out["expected_return"][rows] = result.expected_return.cpu().numpy()
    out["decision"][rows] = result.decision.cpu().numpy()
    out["shield"][rows] = result.shield.cpu().numpy()
    out["margin"][rows] = result.margin.cpu().numpy()
