"""The served warehouse planner: a site's robots planned jointly from their observations alone.

Known answers first (who the other agents are, sites kept apart, the deadline's brake), then the served
answer's shape and errors, on a tiny trained fleet model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from planners.base import Decision, Fallback
from planners.policy import PolicyNet
from planners.service import FleetPlanner, load_planner
from planners.warehouse_costs import WarehouseCosts
from planners.warehouse_service import WarehousePlanner, brake, floor_state
from worldmodel.envs.warehouse import NEIGHBOURS, OBS_DIM, POS_DIMS, TASK_DIMS, VEL_DIMS, WarehouseFloor
from worldmodel.envs.warehouse_layout import layout_for

from tests.thread_fixtures import one_thread  # noqa: F401  (autouse: one torch thread)
from tests.warehouse_fixtures import warehouse_models  # noqa: F401


@pytest.fixture(scope="module")
def costs() -> WarehouseCosts:
    return WarehouseCosts(layout_for(8))


def _crowd(robots: int = 8, humans: int = 2) -> tuple[np.ndarray, dict]:
    """A floor whose agents stand in a row 0.8 m apart in the staging area, so every robot senses others."""
    floor = WarehouseFloor(robots, humans=humans, layout=layout_for(8), seed=0)
    xs = 1.0 + 0.8 * np.arange(robots + humans)
    at = np.stack([xs, np.ones_like(xs)], 1)
    walking = np.tile([[0.5, 0.0], [0.0, 0.3], [-0.2, 0.1]], (humans // 3 + 1, 1))[:humans]
    return floor.reset(seed=0, options={"robots_pos": at[:robots], "humans_pos": at[robots:],
                                        "humans_vel": walking})


def test_the_other_agents_come_from_the_slots_once_each(costs: WarehouseCosts) -> None:
    obs, info = _crowd()
    state = floor_state(torch.as_tensor(obs), costs)
    seen = np.asarray(info["humans_pos"])
    assert state.humans_pos.shape == (2, 2)  # each human once, however many robots see it
    np.testing.assert_allclose(np.sort(state.humans_pos.numpy(), 0), np.sort(seen, 0), atol=1e-4)
    np.testing.assert_allclose(np.sort(state.humans_vel.numpy(), 0), np.sort(info["humans_vel"], 0), atol=1e-4)


def test_a_robot_that_did_not_ask_is_another_agent(costs: WarehouseCosts) -> None:
    obs, info = _crowd(humans=0)
    state = floor_state(torch.as_tensor(obs[1:]), costs)  # robot 0 sent nothing this tick
    np.testing.assert_allclose(state.humans_pos.numpy(), obs[:1, POS_DIMS], atol=1e-4)
    np.testing.assert_allclose(state.humans_vel.numpy(), obs[:1, VEL_DIMS], atol=1e-4)


def test_load_planner_picks_the_served_planner_by_model(warehouse_models: dict[str, str]) -> None:  # noqa: F811
    assert isinstance(load_planner(warehouse_models["fleet"]), WarehousePlanner)
    assert isinstance(load_planner(warehouse_models["agent"]), FleetPlanner)  # per-agent: planned alone


@pytest.fixture(scope="module")
def planner(warehouse_models: dict[str, str]) -> WarehousePlanner:  # noqa: F811
    served = load_planner(warehouse_models["fleet"])
    assert isinstance(served, WarehousePlanner)
    return served


def _apart(n: int = 4) -> np.ndarray:
    """n robots at rest, 3 m apart in the staging area, each with a task."""
    floor = WarehouseFloor(n, seed=1)
    obs, _ = floor.reset(seed=1)
    return obs


def test_sites_are_planned_apart(planner: WarehousePlanner) -> None:
    obs = _apart()
    twins = np.concatenate([obs, obs])  # the same floor twice: each robot stands where its twin does
    apart = planner.plan(twins, sites=["a"] * 4 + ["b"] * 4)
    joint = planner.plan(twins)  # one site: every robot is predicted to touch its twin, step after step
    contact = planner.costs.weights.contact
    assert joint.expected_return.mean() < apart.expected_return.mean() - contact * planner.horizon / 2


def test_the_answer_predicts_positions_and_carries_plans(planner: WarehousePlanner) -> None:
    obs = _apart()
    batch = planner.plan(obs, sites=["a"] * 4)
    h = planner.horizon
    assert batch.actions.shape == (4, 2) and batch.warm_start.shape == (4, h, 2)
    assert np.all(np.abs(batch.actions) <= 1) and np.isfinite(batch.expected_return).all()
    np.testing.assert_array_equal(batch.trajectory[:, 0], obs)
    assert np.isfinite(batch.trajectory[:, 1:, POS_DIMS]).all() and np.isnan(batch.trajectory[:, 1:, TASK_DIMS]).all()
    assert np.isfinite(batch.disagreement).all() and (batch.disagreement >= 0).all()
    again = planner.plan(obs, warm_start=batch.warm_start, sites=["a"] * 4)  # warm-started: same shapes
    assert again.actions.shape == (4, 2)


def test_a_site_that_would_miss_its_budget_brakes(planner: WarehousePlanner) -> None:
    obs = _apart()
    obs[:, VEL_DIMS] = [[1.0, 0.0], [0.0, -0.5], [0.2, 0.2], [0.0, 0.0]]
    planner.plan(obs)  # times a call
    batch = planner.plan(obs, budget_ms=1e-6)
    assert (batch.fallback_reason == Fallback.DEADLINE).all() and (batch.decision != Decision.PLANNED).all()
    shielded = batch.decision == Decision.SHIELDED
    np.testing.assert_allclose(batch.actions[~shielded], brake(torch.as_tensor(obs)).numpy()[~shielded], atol=1e-6)


@pytest.mark.parametrize("kwargs, says", [
    ({"objectives": ["goal"] * 4}, "objective 'goal'"),
    ({"modes": ["policy"] * 4}, "mode 'policy'"),
    ({"constraints": {"zones": np.zeros((4, 1, 3))}}, "constraints"),
    ({"sites": ["a"]}, "sites must have one entry per robot"),
])
def test_what_a_floor_cannot_take_is_named(planner: WarehousePlanner, kwargs: dict, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        planner.plan(_apart(), **kwargs)


def test_lone_agent_models_refuse_sites(warehouse_models: dict[str, str]) -> None:  # noqa: F811
    lone = load_planner(warehouse_models["agent"])
    with pytest.raises(ValueError, match="site is for Warehouse-v1"):
        lone.plan(np.zeros((1, OBS_DIM), np.float32), sites=["a"])


def test_scoring_a_tick_matches_the_neighbours_actions(planner: WarehousePlanner) -> None:
    obs, _ = _crowd(robots=4, humans=0)
    actions = np.zeros((4, 2), np.float32)
    scored = planner.score(obs, actions, obs)
    assert scored["errors"].shape == (4,) and np.isfinite(scored["errors"]).all()
    assert scored["model_version"] == planner.version and NEIGHBOURS == 4


def test_the_fallback_is_the_policy_when_the_model_has_one(planner: WarehousePlanner) -> None:
    spec = planner.model.spec
    policy = PolicyNet(OBS_DIM, 2, spec.act_low, spec.act_high)
    served = WarehousePlanner(planner.model, planner.cfg, policy)
    obs = _apart()
    served.plan(obs)  # times a call
    batch = served.plan(obs, budget_ms=1e-6)
    assert batch.fallback_source == "policy" and (batch.fallback_reason == Fallback.DEADLINE).all()
    acted = batch.decision == Decision.FALLBACK  # passed by the shield
    expected = policy.act(torch.as_tensor(obs)).detach().numpy()
    np.testing.assert_allclose(batch.actions[acted], expected[acted], atol=1e-5)
    assert planner.fallback_source == "brake"
