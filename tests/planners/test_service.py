"""FleetPlanner with a policy: policy-only rows, the policy fallback, the shield, constraints, describe and
the loader, on Nav2D's noiseless physics (``test_explain``'s toys)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from planners import PlanConfig
from planners.base import Decision
from planners.config import SHIELD_HORIZON
from planners.constraints import Constraint
from planners.objectives import ACTION_HIGH, ACTION_LOW, BOX, MAX_SPEED, ZONES
from planners.policy import PolicyNet
from planners.policy_artifact import save_policy
from planners.service import FleetPlanner, ServiceConfig
from worldmodel.artifact import save_model
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.envs import NAV2D_ID, make_env, space_spec
from worldmodel.model import WorldModel, build_dynamics, build_reward

from .test_explain import SERVED, ToyPolicy, nav_model

AT_REST = np.array([[0.0, 0.0, 0.0, 0.0, 3.0, 0.0], [0.0, 5.0, 0.0, 0.0, -2.0, 5.0]], np.float32)
FAST = np.array([[0.0, 0.0, 2.0, 0.0, 3.0, 0.0]], np.float32)  # heading for a zone at speed 2
ZONE = {ZONES: np.array([[[1.5, 0.0, 0.5]]], np.float32)}  # straight ahead, 1 to 2 on the x axis


def test_policy_rows_take_the_policys_action_without_planning_beside_planned_rows() -> None:
    policy = ToyPolicy()
    service = FleetPlanner(nav_model(), SERVED, policy=policy)
    out = service.plan(AT_REST, objectives=["goal", "goal"], modes=["policy", "plan"])
    expected = policy.act(torch.as_tensor(AT_REST[:1]))[0].numpy()
    np.testing.assert_allclose(out.actions[0], expected, atol=1e-6)
    assert out.decision.tolist() == [Decision.POLICY, Decision.PLANNED] and out.fallback_source == "policy"
    assert out.shield.tolist() == [0, 0] and np.isinf(out.margin).all()  # no constraints given
    assert np.isnan(out.expected_return[0]) and np.isfinite(out.expected_return[1])
    only = service.plan(AT_REST, objectives=["goal"] * 2, modes=["policy"] * 2)
    assert only.iterations == 0 and (only.decision == Decision.POLICY).all()


def test_policy_mode_needs_a_policy_and_modes_are_checked() -> None:
    service = FleetPlanner(nav_model(), SERVED)
    with pytest.raises(ValueError, match="mode 'policy' needs a policy, and model 1.0.0 has none"):
        service.plan(AT_REST, modes=["plan", "policy"])
    with pytest.raises(ValueError, match="unknown mode 'dream'"):
        service.plan(AT_REST, modes=["plan", "dream"])
    with pytest.raises(ValueError, match=r"one entry per agent \(2\), got 2 and 1"):
        service.plan(AT_REST, modes=["plan"])


def test_a_budget_no_round_fits_falls_back_to_the_policy_not_to_zero() -> None:
    policy = ToyPolicy()
    service = FleetPlanner(nav_model(), SERVED, policy=policy)
    service.warmup(sizes=(2,))
    out = service.plan(AT_REST, objectives=["goal", "goal"], budget_ms=1e-3)
    assert (out.decision == Decision.FALLBACK).all() and out.reasons() == ["deadline"] * 2
    np.testing.assert_allclose(out.actions, policy.act(torch.as_tensor(AT_REST)).numpy(), atol=1e-6)
    assert np.abs(out.actions).max() > 0.5  # the controller acts: not a silent stop
    zero = FleetPlanner(nav_model(), SERVED)
    zero.warmup(sizes=(2,))
    out = zero.plan(AT_REST, objectives=["goal", "goal"], budget_ms=1e-3)
    assert out.fallback_source == "zero" and np.allclose(out.actions, 0)


def test_the_shield_replaces_a_policy_action_heading_into_a_zone_unless_it_is_off() -> None:
    eager = ToyPolicy(gain=5.0)  # full ahead towards the goal, through the zone
    out = FleetPlanner(nav_model(), SERVED, policy=eager).plan(FAST, objectives=["goal"], constraints=ZONE,
                                                               modes=["policy"])
    assert out.decision.tolist() == [Decision.SHIELDED] and out.shield.tolist() == [Constraint.NO_FLY_ZONE]
    assert out.margin[0] >= 0 and out.actions[0, 0] < 0  # the safe replacement brakes
    off = FleetPlanner(nav_model(), ServiceConfig(plan=SERVED.plan, shield=False), policy=eager)
    unshielded = off.plan(FAST, objectives=["goal"], constraints=ZONE, modes=["policy"])
    assert unshielded.decision.tolist() == [Decision.POLICY] and unshielded.actions[0, 0] > 0
    assert off.describe()["shield"] is None


def test_constraints_reach_the_planner_and_bad_ones_are_named() -> None:
    service = FleetPlanner(nav_model(), SERVED)
    low, high = np.array([[-0.2, -0.2], [0.0, 0.0]], np.float32), np.array([[0.2, 0.2], [0.5, 0.5]], np.float32)
    out = service.plan(AT_REST, objectives=["goal"] * 2, constraints={ACTION_LOW: low, ACTION_HIGH: high})
    assert (out.actions >= low - 1e-6).all() and (out.actions <= high + 1e-6).all()
    assert (out.warm_start >= low[:, None] - 1e-6).all() and (out.warm_start <= high[:, None] + 1e-6).all()
    with pytest.raises(ValueError, match=r"unknown constraint\(s\) \['walls'\]"):
        service.plan(AT_REST, constraints={"walls": np.zeros(2)})
    with pytest.raises(ValueError, match="constraint 'max_speed' must have 1 dims with N = 2 first"):
        service.plan(AT_REST, constraints={MAX_SPEED: np.ones(3)})
    box = np.tile(np.array([[-1.0, -1.0], [1.0, 6.0]], np.float32), (2, 1, 1))
    assert np.isfinite(service.plan(AT_REST, objectives=["goal"] * 2, constraints={BOX: box}).margin).all()


def test_service_config_round_trips_its_shield_setting() -> None:
    cfg = ServiceConfig(shield=False, shield_horizon=7)
    assert ServiceConfig.from_dict(cfg.to_dict()) == dataclasses.replace(cfg, settings=cfg.planner_settings)
    assert ServiceConfig.from_dict({}).shield is True and ServiceConfig().shield_horizon == SHIELD_HORIZON
    with pytest.raises(ValueError, match="shield must be true or false, got 'yes'"):
        ServiceConfig.from_dict({"shield": "yes"})
    with pytest.raises(ValueError, match="shield_horizon must be an integer >= 1, got 0"):
        ServiceConfig(shield_horizon=0)


def test_the_loader_serves_a_model_directorys_policy_and_describes_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = space_spec(make_env(NAV2D_ID), NAV2D_ID)
    small = ModelConfig(ensemble_size=2, hidden=16, layers=2, reward_hidden=16, reward_layers=2)
    model = WorldModel(spec, small, TrainConfig(), build_dynamics(spec, small).eval(),
                       build_reward(spec, small).eval(), None, version="1.0.0")
    save_model(model, tmp_path / "m")
    plain = FleetPlanner.load(tmp_path / "m", ServiceConfig(plan=PlanConfig(horizon=4, samples=8)))
    assert plain.policy is None and plain.describe()["policy"] is None and plain.describe()["modes"] == ["plan"]
    save_policy(tmp_path / "m", PolicyNet(6, 2, spec.act_low, spec.act_high, zones=True), {"iterations": 0})
    served = FleetPlanner.load(tmp_path / "m", ServiceConfig(plan=PlanConfig(horizon=4, samples=8, prior_share=0.25),
                                                             shield_horizon=10))
    info = served.describe()
    assert info["policy"]["version"] == "1.0.0" and info["policy"]["parent"] is None
    assert info["modes"] == ["plan", "policy"] and info["prior_share"] == 0.25 and info["shield"] == 10
    out = served.plan(np.zeros((3, 6), np.float32), objectives=["goal"] * 3, modes=["plan", "policy", "plan"])
    assert out.decision.tolist() == [Decision.PLANNED, Decision.POLICY, Decision.PLANNED]
