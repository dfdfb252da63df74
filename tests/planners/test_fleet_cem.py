"""Fleet CEM with the exact model (a known answer): passing head-on in an aisle, going around a shelf block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from planners.fleet_baselines import constant_velocity, coordinated, independent
from planners.fleet_cem import FleetPlanConfig
from planners.fleet_rollout import ExactAgentModel, ExactFleetModel, FloorState
from planners.warehouse_costs import WarehouseCosts
from worldmodel.envs.warehouse import POS_DIMS, WarehouseFloor
from worldmodel.envs.warehouse_layout import Layout

from tests.thread_fixtures import one_thread  # noqa: F401  (autouse: one torch thread)


# A 2 m aisle between two long shelves (free centres y in [2.3, 3.7]); its ends are the two targets.
AISLE = Layout(12, 6, [[0.5, 0.5, 11.5, 2.0], [0.5, 4.0, 11.5, 5.5]], [[11.0, 3.0]], [[1.0, 3.0], [11.0, 3.0]])
CFG = FleetPlanConfig(horizon=15, samples=32)


def drive(planner_for, model, layout: Layout, pos: np.ndarray, targets: np.ndarray, ticks: int,
          costs: WarehouseCosts) -> tuple[int, int, np.ndarray, int]:
    """Robots at ``pos`` with ``targets`` (their drop stations), no humans nor actuation noise.

    Returns contacts between robots, shelf contacts, the (T + 1, N, 2) paths and deliveries.
    """
    floor = WarehouseFloor(len(pos), 0, layout, seed=0, action_noise=0.0)
    floor.reset(options={"robots_pos": pos})
    floor._target, floor._stage = np.asarray(targets, dtype=np.float64), np.ones(len(pos), dtype=np.int64)
    obs, info = floor._observation(*(np.zeros(len(pos), np.int64),) * 3)  # the observation with these targets
    planner, warm = planner_for(model, costs, CFG), None
    contacts = shelf = delivered = 0
    paths = [obs[:, POS_DIMS]]
    for _ in range(ticks):
        plan = planner.plan(FloorState.from_floor(obs, info, costs), warm)
        assert plan.actions.shape == (len(pos), 2) and plan.plan.shape == (len(pos), CFG.horizon, 2)
        warm = plan.shift()
        obs, _, _, _, info = floor.step(plan.actions.numpy())
        contacts, shelf = contacts + info["collisions"].sum(), shelf + info["shelf_collisions"].sum()
        delivered += info["deliveries"].sum()
        paths.append(obs[:, POS_DIMS])
    return int(contacts), int(shelf), np.stack(paths), int(delivered)


@pytest.fixture(scope="module")
def aisle_costs() -> WarehouseCosts:
    return WarehouseCosts(AISLE)


HEAD_ON = np.array([[1.5, 3.0], [10.5, 3.0]]), np.array([[11.0, 3.0], [1.0, 3.0]])


def test_two_robots_head_on_in_an_aisle_pass_when_planned_jointly(aisle_costs: WarehouseCosts) -> None:
    contacts, shelf, paths, delivered = drive(coordinated, ExactFleetModel(AISLE), AISLE, *HEAD_ON, 80, aisle_costs)
    assert contacts == 0 and shelf == 0
    assert paths[-1, 0, 0] > paths[-1, 1, 0] + 1.0  # they swapped sides of the aisle
    assert delivered >= 1


def test_the_independent_baseline_drives_them_into_each_other(aisle_costs: WarehouseCosts) -> None:
    contacts, _, _, _ = drive(independent, ExactAgentModel(AISLE), AISLE, *HEAD_ON, 60, aisle_costs)
    assert contacts > 0


def test_the_constant_velocity_baseline_plans_against_its_slots(aisle_costs: WarehouseCosts) -> None:
    contacts, shelf, _, _ = drive(constant_velocity, ExactAgentModel(AISLE), AISLE, *HEAD_ON, 60, aisle_costs)
    assert contacts == 0 and shelf == 0  # head-on at steady speeds, constant velocity is a good guess


def test_a_robot_whose_target_is_behind_a_shelf_block_goes_around_it() -> None:
    block = Layout(10, 10, [[4.0, 2.0, 6.0, 8.0]], [[7.0, 5.0]], [[3.0, 5.0]])
    costs = WarehouseCosts(block)
    _, shelf, paths, delivered = drive(coordinated, ExactFleetModel(block), block, np.array([[3.0, 5.0]]),
                                       np.array([[7.0, 5.0]]), 80, costs)
    assert delivered == 1 and shelf == 0
    assert np.abs(paths[:, 0, 1] - 5.0).max() > 3.0  # around an end of the block, not into its face


def test_a_wrong_warm_start_is_refused(aisle_costs: WarehouseCosts) -> None:
    floor = WarehouseFloor(2, 0, AISLE, seed=0)
    obs, info = floor.reset()
    planner = coordinated(ExactFleetModel(AISLE), aisle_costs, CFG)
    with pytest.raises(ValueError, match="warm_start must be"):
        planner.plan(FloorState.from_floor(obs, info, aisle_costs), torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        FleetPlanConfig(horizon=0)
