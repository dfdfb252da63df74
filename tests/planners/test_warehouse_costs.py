"""Warehouse planning costs: geodesic distance fields with known answers, then the proximity terms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from planners.warehouse_costs import CostWeights, DistanceFields, WarehouseCosts, aisle_lanes
from worldmodel.envs.warehouse import ROBOT_RADIUS
from worldmodel.envs.warehouse_layout import Layout

# One shelf block [4, 6] x [2, 8] in a 10 x 10 floor; the target sits right of it, level with its middle.
BLOCK = Layout(10, 10, [[4.0, 2.0, 6.0, 8.0]], [[1.0, 1.0]], [[7.0, 5.0]])
TARGET = torch.tensor([[7.0, 5.0]])


def around_the_block(start_x: float = 3.0) -> float:
    """The shortest path for a disc of ROBOT_RADIUS from (start_x, 5) to (7, 5) around the block: a tangent to
    the rounded corner (4, 8), a quarter-ish arc, the 2 m along the top, and the mirror image."""
    r, cx, cy = ROBOT_RADIUS, 4.0 - start_x, 8.0 - 5.0
    d = math.hypot(cx, cy)
    turn = math.atan2(cy, cx) + math.asin(r / d)  # heading of the tangent, turned to horizontal along the arc
    return 2 * (math.sqrt(d * d - r * r) + r * turn) + 2.0


@pytest.mark.parametrize("cell", [0.25, 0.1])
def test_the_geodesic_distance_around_a_shelf_block_is_the_path_around_it(cell: float) -> None:
    fields = DistanceFields(BLOCK, ROBOT_RADIUS, cell)
    target = fields.index(TARGET)
    got = fields.lookup(torch.tensor([3.0, 5.0]), target).item()
    exact = around_the_block()
    # The grid keeps a little more clearance than the disc needs and its 32 directions bend paths by
    # up to 1.3%: never shorter than the true path, longer by at most a couple of cells and 2%.
    assert exact - cell <= got <= 1.02 * exact + 2.5 * cell, (got, exact)
    assert got > 2.2 * 4.0  # the straight line (4 m) goes through the shelf


def test_in_open_floor_the_field_is_the_straight_line() -> None:
    fields = DistanceFields(BLOCK, ROBOT_RADIUS, 0.1)
    target = fields.index(TARGET)
    points = torch.tensor([[9.0, 9.0], [9.5, 2.0], [7.0, 9.5], [8.0, 5.0]])
    straight = (points - TARGET).norm(dim=-1)
    got = fields.lookup(points, target)
    assert torch.all(got >= straight - 0.05) and torch.all(got <= 1.013 * straight + 0.1), (got, straight)


def test_inside_a_shelf_the_distance_grows_away_from_the_nearest_free_side() -> None:
    fields = DistanceFields(BLOCK, ROBOT_RADIUS, 0.1)
    target = fields.index(TARGET)
    edge, inside, deeper = fields.lookup(torch.tensor([[6.4, 5.0], [6.1, 5.0], [5.8, 5.0]]), target).tolist()
    assert edge < inside < deeper  # a robot pushed into the shelf is led back out on its own side
    assert deeper < around_the_block(5.8)  # never a shortcut through the shelf's far side, either


def test_layout_targets_have_fields_and_new_points_get_theirs_on_demand() -> None:
    fields = DistanceFields(BLOCK, ROBOT_RADIUS, 0.25)
    assert len(fields.field) == len(BLOCK.picks) + len(BLOCK.stations)
    index = fields.index(torch.tensor([[7.0, 5.0], [1.0, 1.0], [2.0, 9.0], [2.0, 9.0]]))
    assert index[:2].tolist() == [0, 1] and index[2] == index[3] == 2 and len(fields.field) == 3
    assert fields.lookup(torch.tensor([2.0, 9.0]), index[2]).item() < 0.2
    with pytest.raises(ValueError, match="finite"):
        fields.index(torch.tensor([[float("nan"), 1.0]]))


def test_proximity_costs_charge_contact_and_the_margin_only() -> None:
    costs = WarehouseCosts(BLOCK, CostWeights(contact=10.0, proximity=20.0, margin=0.2), cell=0.5)
    touch = 2 * ROBOT_RADIUS
    dist = torch.tensor([[touch - 0.1, touch + 0.1, touch + 0.3, float("inf")]])
    assert costs.agents(dist).item() == pytest.approx(-(10 + 20 * 0.3) - 20 * 0.1)
    near_wall = torch.tensor([[0.2, 5.0], [0.6, 5.0], [1.5, 5.0]])  # the left wall is x = 0
    assert costs.shelves(near_wall).tolist() == pytest.approx([-(10 + 20 * 0.3), 0.0, 0.0], abs=1e-5)
    progress = costs.progress(torch.tensor([[8.0, 5.0]]), costs.targets(TARGET)).item()  # 1 m from the target
    assert progress == pytest.approx(-CostWeights().progress, rel=0.1)
    with pytest.raises(ValueError, match="margin"):
        CostWeights(margin=-1.0)


def test_the_shelf_cost_of_distances_is_the_shelf_cost_of_positions() -> None:
    costs = WarehouseCosts(BLOCK, cell=0.5)
    pos = torch.tensor([[0.2, 5.0], [3.8, 5.0], [6.3, 1.9], [2.0, 2.0]])
    gap = torch.hypot(pos[:, :1].clamp(costs.rects[:, 0], costs.rects[:, 2]) - pos[:, :1],
                      pos[:, 1:].clamp(costs.rects[:, 1], costs.rects[:, 3]) - pos[:, 1:])  # (4, R)
    torch.testing.assert_close(costs.shelf_gaps(gap), costs.shelves(pos))
    assert costs.shelf_gaps(gap)[-1] == 0 and (costs.shelf_gaps(gap)[:3] < 0).all()


def test_aisles_between_shelf_columns_keep_right() -> None:
    # The aisle between the left wall and the block spans x in [0, 4] over the block's height.
    points = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0], [3.0, 9.0], [8.0, 5.0]])
    assert aisle_lanes(BLOCK, points).tolist() == [-1, 1, 0, 0, -1]  # down, up, shelf, cross aisle, right aisle


def test_a_lane_makes_travel_against_it_longer_and_leaves_travel_with_it_alone() -> None:
    plain, lanes = DistanceFields(BLOCK, ROBOT_RADIUS, 0.25), DistanceFields(BLOCK, ROBOT_RADIUS, 0.25, lane_penalty=3.0)
    up = torch.tensor([[3.0, 9.5], [1.0, 9.5]])  # targets above the aisle, on its up and its down side
    start = torch.tensor([[3.0, 3.0], [1.0, 3.0]])
    free = plain.lookup(start, plain.index(up))
    kept = lanes.lookup(start, lanes.index(up))
    assert kept[0] == pytest.approx(free[0].item(), rel=0.02)  # up the right half: as without lanes
    assert free[1] + 0.5 < kept[1] < 2 * free[1]  # up the left half: it crosses over to the right half first
