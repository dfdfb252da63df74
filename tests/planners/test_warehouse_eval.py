"""The closed loop on a warehouse floor: a tiny run with a small trained fleet model, then the exact one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from planners.fleet_baselines import coordinated, independent
from planners.fleet_cem import FleetPlanConfig
from planners.fleet_rollout import ExactAgentModel, ExactFleetModel
from planners.fleet_shield import FleetShield
from planners.warehouse_costs import WarehouseCosts
from planners.warehouse_eval import run_floor
from worldmodel.config import TrainConfig
from worldmodel.envs.fleet_collect import collect_fleet
from worldmodel.envs.warehouse import WarehouseFloor
from worldmodel.fit import fit
from worldmodel.fleet_data import neighbour_actions, warehouse_layout
from worldmodel.fleet_dynamics import FleetEnsemble

from tests.thread_fixtures import one_thread  # noqa: F401  (autouse: one torch thread)


SMALL = FleetPlanConfig(horizon=10, samples=16)


def small_fleet_model() -> FleetEnsemble:
    """A FleetEnsemble fitted in seconds on one short floor episode of 6 robots."""
    torch.manual_seed(0)
    data = collect_fleet(robots=6, episodes=1, seed=0, steps=200)
    rows = [torch.as_tensor(np.asarray(x), dtype=torch.float32)
            for x in (data.obs, data.actions, neighbour_actions(data), data.new_obs)]
    split = int(0.8 * len(rows[0]))
    model = FleetEnsemble(warehouse_layout(), 2, members=2, hidden=16)
    model.fit_normalizers(*(x[:split] for x in rows))
    fit(model, [x[:split] for x in rows], [x[split:] for x in rows], TrainConfig(epochs=5, patience=5, lr=3e-3))
    return model.eval()


def test_a_small_trained_fleet_model_drives_a_floor_in_closed_loop() -> None:
    floor = WarehouseFloor(4, 1, seed=0)
    costs = WarehouseCosts(floor.layout, cell=0.5)
    result = run_floor(coordinated(small_fleet_model(), costs, SMALL), floor, costs, ticks=20, seed=3)
    assert (result.robots, result.humans, result.ticks) == (4, 1, 20)
    assert result.paths.shape == (21, 4, 2) and result.path_collisions.shape == (21, 4)
    assert result.collisions == result.path_collisions.sum() and result.plan_ms > 0
    assert np.isfinite(result.paths).all() and floor.layout.contains(result.paths).all()
    summary = result.summary()
    assert summary["collisions_per_robot_hour"] == pytest.approx(result.collisions / (4 * 20 * 0.1 / 3600))


def test_on_a_busy_floor_joint_planning_collides_less_than_independent_planning() -> None:
    floor = WarehouseFloor(10, 0, seed=0)
    costs = WarehouseCosts(floor.layout, cell=0.5)
    exact = ExactFleetModel(floor.layout)
    joint = run_floor(coordinated(exact, costs, SMALL), floor, costs, ticks=60, seed=1, shield=FleetShield(exact, costs))
    alone = run_floor(independent(ExactAgentModel(floor.layout), costs, SMALL), floor, costs, ticks=60, seed=1)
    assert joint.collisions < alone.collisions / 2, (joint.collisions, alone.collisions)
    assert joint.shelf_collisions == 0  # the fleet shield's (an unshielded plan may be pushed into a shelf)


def test_costs_of_another_floor_are_refused() -> None:
    floor = WarehouseFloor(2, 0, seed=0)
    other = WarehouseCosts(WarehouseFloor(3, 0).layout, cell=0.5)
    with pytest.raises(ValueError, match="layout"):
        run_floor(coordinated(ExactFleetModel(floor.layout), other, SMALL), floor, other, ticks=1)
