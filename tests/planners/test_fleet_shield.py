"""The fleet shield on toy floors with known answers (the floor's own physics as the model), then a short loop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from planners.fleet_cem import FleetPlan
from planners.fleet_rollout import ExactFleetModel, FleetRollout, FloorState
from planners.fleet_shield import (AGENT_CONTACT, ALTERNATIVES, CONSTRAINTS, NONE, SHELF, FleetShield,
                                   FleetShieldConfig, ShieldedActions)
from planners.warehouse_costs import WarehouseCosts
from planners.warehouse_eval import run_floor
from worldmodel.dynamics import Prediction
from worldmodel.envs.warehouse import WarehouseFloor
from worldmodel.envs.warehouse_layout import layout_for
from worldmodel.fleet_data import warehouse_layout
from worldmodel.fleet_dynamics import FleetEnsemble

from tests.thread_fixtures import one_thread  # noqa: F401  (autouse: one torch thread)

LAYOUT = layout_for(10)  # shelves [2, 3, 3, 9], [5, 3, 6, 9], ...: a 2 m aisle at x 3..5, y 3..9
COSTS = WarehouseCosts(LAYOUT, cell=0.5)
HEAD_ON = (np.array([[4.0, 4.0], [4.0, 6.0]]), np.array([[0.0, 1.5], [0.0, -1.5]]))
"""Two robots at full speed towards each other along the aisle, 1.4 m apart between their bodies."""
BOTH = FleetShieldConfig(constraints=(AGENT_CONTACT, SHELF))
"""Agent contacts flag a robot too (the defaults flag shelves only)."""
INTO_SHELF = (np.array([[4.5, 5.0]]), np.array([[1.0, 0.0]]))
"""One robot 0.2 m from the shelf face at x = 5, driving at it."""


def floor_at(pos: np.ndarray, vel: np.ndarray) -> tuple[WarehouseFloor, np.ndarray, dict]:
    floor = WarehouseFloor(len(pos), 0, LAYOUT, seed=0, action_noise=0.0)
    obs, info = floor.reset(options={"robots_pos": pos, "robots_vel": vel})
    return floor, obs, info


def towards_each_other(n: int = 2, h: int = 10) -> torch.Tensor:
    """(N, H, A): robot 0 full ahead up the aisle, robot 1 full ahead down it."""
    plan = torch.zeros(n, h, 2)
    plan[0, :, 1], plan[1, :, 1] = 1.0, -1.0
    return plan


def drive(floor: WarehouseFloor, obs: np.ndarray, info: dict, plan: torch.Tensor, shield: FleetShield | None,
          ticks: int) -> tuple[int, int, list[ShieldedActions]]:
    """Step the floor ``ticks`` times with the same plan, through the shield when given: (contacts, shelf, answers)."""
    contacts = shelf = 0
    answers = []
    for _ in range(ticks):
        actions = plan[:, 0]
        if shield is not None:
            answers.append(shield.check(FloorState.from_floor(obs, info, COSTS), plan))
            actions = answers[-1].actions
        obs, _, _, _, info = floor.step(actions.numpy())
        contacts, shelf = contacts + int(info["collisions"].sum()), shelf + int(info["shelf_collisions"].sum())
    return contacts, shelf, answers


def test_two_robots_head_on_are_flagged_as_agent_contact_and_do_not_touch() -> None:
    shield = FleetShield(ExactFleetModel(LAYOUT), COSTS, BOTH)
    assert drive(*floor_at(*HEAD_ON), towards_each_other(), None, 15)[0] > 0  # unshielded, they meet
    contacts, shelf, answers = drive(*floor_at(*HEAD_ON), towards_each_other(), shield, 15)
    assert answers[0].constraint.tolist() == [AGENT_CONTACT, AGENT_CONTACT]
    assert (answers[0].choice > 0).all() and not torch.equal(answers[0].actions, towards_each_other()[:, 0])
    assert (contacts, shelf) == (0, 0)


def test_a_robot_driving_into_a_shelf_is_flagged_as_shelf_and_stays_off_it() -> None:
    shield = FleetShield(ExactFleetModel(LAYOUT), COSTS)
    plan = torch.zeros(1, 10, 2)
    plan[..., 0] = 1.0  # at the shelf face
    assert drive(*floor_at(*INTO_SHELF), plan, None, 5)[1] > 0
    contacts, shelf, answers = drive(*floor_at(*INTO_SHELF), plan, shield, 10)
    assert answers[0].constraint.tolist() == [SHELF] and CONSTRAINTS[SHELF] == "shelf"
    assert answers[0].actions[0, 0] < 0  # pushing away from the face, not on into it
    assert (contacts, shelf) == (0, 0)


def test_a_safe_fleet_keeps_its_plans_exactly() -> None:
    pos, vel = np.array([[1.0, 1.5], [7.0, 1.5], [10.0, 10.0]]), np.array([[0.5, 0.0], [-0.3, 0.0], [0.0, 0.0]])
    _, obs, info = floor_at(pos, vel)
    plan = torch.zeros(3, 10, 2)
    plan[0, :, 0], plan[1, :, 0], plan[2, :, 1] = 0.2, -0.1, 0.05
    shield = FleetShield(ExactFleetModel(LAYOUT, members=3), COSTS, BOTH)
    answer = shield.check(FloorState.from_floor(obs, info, COSTS), plan)
    assert torch.equal(answer.actions, plan[:, 0])
    assert (answer.constraint == NONE).all() and (answer.choice == 0).all()
    assert answer.counts() == {AGENT_CONTACT: 0, SHELF: 0}


class SecondMemberDrifts(torch.nn.Module):
    """Two members: the floor's physics, and the same with every robot 0.2 m further +x after each step."""

    members = 2

    def __init__(self) -> None:
        super().__init__()
        self.exact = ExactFleetModel(LAYOUT, members=2)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, neighbour_actions: torch.Tensor) -> Prediction:
        mean = self.exact(obs, action, neighbour_actions).mean.clone()  # (E, B, P)
        mean[1, :, 0] += 0.2
        return Prediction(mean, torch.zeros_like(mean))


def test_one_member_predicting_contact_is_enough_and_shapes_hold_for_many_members() -> None:
    _, obs, info = floor_at(np.array([[4.4, 5.0], [1.0, 1.5]]), np.zeros((2, 2)))  # 0.3 m from the face at x = 5
    state, plan = FloorState.from_floor(obs, info, COSTS), torch.zeros(2, 8, 2)
    assert (FleetShield(ExactFleetModel(LAYOUT, members=2), COSTS).check(state, plan).constraint == NONE).all()
    shield = FleetShield(SecondMemberDrifts(), COSTS, FleetShieldConfig(horizon=3))
    answer = shield.check(state, plan)
    assert answer.actions.shape == (2, 2) and answer.constraint.shape == answer.choice.shape == (2,)
    assert answer.constraint.tolist() == [SHELF, NONE] and answer.constraint.dtype == torch.long
    assert 0 <= int(answer.choice[0]) < len(ALTERNATIVES) and int(answer.choice[1]) == 0
    alternatives = shield.alternatives(state, plan[:, :3])
    assert alternatives.shape == (2, len(ALTERNATIVES) - 1, 3, 2) and alternatives.abs().max() <= 1


def test_a_second_round_shields_the_robot_that_a_braking_neighbour_would_put_in_contact() -> None:
    # A and C head-on, B close behind A: braking A clears C but leaves B, on its plan, running into A.
    pos = np.array([[4.0, 5.0], [4.0, 4.2], [4.0, 6.9]])
    vel = np.array([[0.0, 1.5], [0.0, 1.5], [0.0, -1.5]])
    plan = torch.zeros(3, 10, 2)
    plan[:2, :, 1], plan[2, :, 1] = 1.0, -1.0
    _, obs, info = floor_at(pos, vel)
    state = FloorState.from_floor(obs, info, COSTS)
    one = FleetShield(ExactFleetModel(LAYOUT), COSTS, dataclasses.replace(BOTH, rounds=1)).check(state, plan)
    two = FleetShield(ExactFleetModel(LAYOUT), COSTS, dataclasses.replace(BOTH, rounds=2)).check(state, plan)
    assert one.constraint.tolist() == [AGENT_CONTACT, NONE, AGENT_CONTACT] and int(one.choice[1]) == 0
    assert two.constraint.tolist() == [AGENT_CONTACT] * 3 and int(two.choice[1]) > 0
    assert drive(*floor_at(pos, vel), plan, FleetShield(ExactFleetModel(LAYOUT), COSTS,
                                                        dataclasses.replace(BOTH, rounds=2)), 15)[:2] == (0, 0)


def test_the_default_flags_only_shelves_and_leaves_a_head_on_pair_alone() -> None:
    _, obs, info = floor_at(*HEAD_ON)
    shield = FleetShield(ExactFleetModel(LAYOUT), COSTS)
    answer = shield.check(FloorState.from_floor(obs, info, COSTS), towards_each_other())
    assert (answer.constraint == NONE).all() and torch.equal(answer.actions, towards_each_other()[:, 0])


def test_the_mean_only_trace_is_each_members_mean_path_and_measures_every_step() -> None:
    _, obs, info = floor_at(*HEAD_ON)
    state = FloorState.from_floor(obs, info, COSTS)
    rollout = FleetRollout(FleetEnsemble(warehouse_layout(), 2, members=2, hidden=16).eval(), COSTS)
    actions = towards_each_other(h=4)[None].expand(2, -1, -1, -1)  # (K, N, H, A): one plan, once per member
    first, again = (rollout.trace(state, actions, torch.Generator().manual_seed(s), sample=False) for s in (0, 1))
    assert torch.equal(first.paths, again.paths) and not torch.equal(first.paths[0], first.paths[1])
    assert first.agent_dist.shape == first.shelf_gap.shape == (2, 2, 4) and first.paths.shape == (2, 2, 5, 2)
    gap = (first.paths[:, 0, 1:] - first.paths[:, 1, 1:]).norm(dim=-1)  # (K, H): the pair, the nearest agents
    torch.testing.assert_close(first.agent_dist[:, 0], gap)
    returns, paths = rollout.run(state, actions, torch.Generator().manual_seed(0))
    assert returns.shape == (2, 2) and not torch.equal(paths, first.paths)  # run draws from each member


def test_bad_plans_and_settings_are_refused_with_what_was_expected() -> None:
    _, obs, info = floor_at(*HEAD_ON)
    shield = FleetShield(ExactFleetModel(LAYOUT), COSTS)
    with pytest.raises(ValueError, match="H >= the shield's horizon 5"):
        shield.check(FloorState.from_floor(obs, info, COSTS), torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="N = 2 robots"):
        shield.check(FloorState.from_floor(obs, info, COSTS), torch.zeros(3, 10, 2))
    for bad in ({"horizon": 0}, {"agent_clearance": -0.1}, {"shelf_clearance": float("nan")}, {"turn": 2.0},
                {"rounds": 0}, {"constraints": (3,)}, {"constraints": ()}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FleetShieldConfig(**bad)


class FullAhead:
    """A fleet planner that drives every robot at full action along +x: into the walls and shelves."""

    def plan(self, state: FloorState, warm_start: torch.Tensor | None = None) -> FleetPlan:
        plan = torch.zeros(len(state.obs), 10, 2)
        plan[..., 0] = 1.0
        return FleetPlan(plan[:, 0], plan, torch.zeros(len(plan)), 1, 0.0)


def test_run_floor_through_the_shield_counts_shielded_robot_ticks_by_constraint() -> None:
    floor = WarehouseFloor(4, 0, LAYOUT, seed=0)
    bare = run_floor(FullAhead(), floor, COSTS, ticks=30, seed=1)
    shield = FleetShield(ExactFleetModel(LAYOUT), COSTS)
    shielded = run_floor(FullAhead(), floor, COSTS, ticks=30, seed=1, shield=shield)
    assert bare.shelf_collisions > 0 and (bare.shielded_agent_contact, bare.shielded_shelf) == (0, 0)
    assert shielded.shielded_shelf > 0 and shielded.shelf_collisions == 0
    assert shielded.shielded == shielded.shielded_agent_contact + shielded.shielded_shelf <= 4 * 30
    assert shielded.shield_ms > 0 and bare.shield_ms == 0
    assert shielded.summary()["shielded_shelf"] == shielded.shielded_shelf
