"""The joint fleet rollout: the exact model reproduces the floor, and batching candidates is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from planners.fleet_rollout import ExactFleetModel, FleetRollout, FloorState
from planners.warehouse_costs import WarehouseCosts
from worldmodel.dynamics import Prediction
from worldmodel.envs.warehouse import PHYS_DIMS, POS_DIMS, SENSE_RADIUS, TASK_DIMS, WarehouseFloor
from worldmodel.envs.warehouse_layout import layout_for
from worldmodel.fleet_data import warehouse_layout
from worldmodel.fleet_dynamics import FleetEnsemble

from tests.thread_fixtures import one_thread  # noqa: F401  (autouse: one torch thread)


LAYOUT = layout_for(10)
# Six robots: a head-on pair and a third touching them, a glancing pair, one driving into the left wall.
POS = np.array([[1.0, 1.5], [1.55, 1.5], [1.3, 2.0], [5.0, 1.5], [5.5, 1.6], [0.35, 4.0]])
VEL = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.2], [-1.2, 0.0], [-1.0, 0.0]])


def crowded_floor(bumper: bool = True) -> tuple[WarehouseFloor, np.ndarray, dict]:
    floor = WarehouseFloor(len(POS), 0, LAYOUT, seed=0, action_noise=0.0, bumper=bumper)
    obs, info = floor.reset(options={"robots_pos": POS, "robots_vel": VEL})
    return floor, obs, info


@pytest.mark.parametrize("bumper", [True, False])
def test_the_exact_model_steps_every_robot_as_the_floor_does(bumper: bool) -> None:
    floor, obs, info = crowded_floor(bumper)
    rng, model = np.random.default_rng(0), ExactFleetModel(LAYOUT, bumper=bumper)
    touched = 0
    for _ in range(4):
        actions = rng.uniform(-1, 1, (len(POS), 2))
        new_obs, _, _, _, new_info = floor.step(actions)
        slot = torch.as_tensor(info["slot_index"])
        act = torch.tensor(actions, dtype=torch.float32)
        neighbours = torch.cat([act, torch.zeros(1, 2)])[torch.where(slot < 0, len(POS), slot)]  # (N, M, A)
        predicted = model(torch.tensor(obs), act, neighbours).mean[0]
        np.testing.assert_allclose(predicted.numpy(), new_obs[:, PHYS_DIMS], atol=1e-5)
        touched += new_info["collisions"].sum() + new_info["shelf_collisions"].sum()
        obs, info = new_obs, new_info
    assert touched >= 6  # the case covers contacts between robots and with a wall


class Deterministic(torch.nn.Module):
    """A fleet model's means with no variance: rollouts that draw no randomness."""

    def __init__(self, model: FleetEnsemble) -> None:
        super().__init__()
        self.model, self.members = model, model.members

    def forward(self, obs, action, neighbour_actions) -> Prediction:
        mean = self.model(obs, action, neighbour_actions).mean
        return Prediction(mean, torch.zeros_like(mean))


def crowded_candidates(k: int, seed: int) -> tuple[FloorState, WarehouseCosts, torch.Tensor]:
    """The crowded floor's state, its costs and ``k`` random candidates of 6 steps (K, N, H, A)."""
    torch.manual_seed(seed)
    _, obs, info = crowded_floor()
    costs = WarehouseCosts(LAYOUT, cell=0.5)
    return FloorState.from_floor(obs, info, costs), costs, torch.rand(k, len(POS), 6, 2) * 2 - 1


def test_a_joint_rollout_of_k_candidates_equals_k_single_candidate_rollouts() -> None:
    state, costs, actions = crowded_candidates(5, seed=0)
    learned = Deterministic(FleetEnsemble(warehouse_layout(), 2, members=1, hidden=16).eval())
    for model in (ExactFleetModel(LAYOUT, members=1), learned):
        rollout = FleetRollout(model, costs)
        returns, paths = rollout.run(state, actions)
        assert returns.shape == (5, len(POS)) and paths.shape == (5, len(POS), 7, 2)
        for k in range(5):
            alone, path = rollout.run(state, actions[k:k + 1])
            torch.testing.assert_close(alone[0], returns[k], rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(path[0], paths[k], rtol=1e-5, atol=1e-5)


def test_against_plans_a_robots_score_does_not_depend_on_what_the_others_sampled() -> None:
    state, costs, actions = crowded_candidates(4, seed=1)
    model = ExactFleetModel(LAYOUT, members=1)
    plans, joint = FleetRollout(model, costs, against_plans=True), FleetRollout(model, costs)
    returns = plans.returns(state, actions)
    torch.testing.assert_close(returns[0], joint.returns(state, actions)[0])  # the plans themselves: one joint row
    assert not torch.allclose(returns[1:], joint.returns(state, actions)[1:])  # the crowd's samples interact
    # Robot 0 (in the head-on pair) scores its samples beside the others' plans, whatever they sampled.
    resampled = actions.clone()
    resampled[1:, 1:] = torch.rand(3, len(POS) - 1, 6, 2) * 2 - 1
    torch.testing.assert_close(plans.returns(state, resampled)[:, 0], returns[:, 0])
    assert not torch.allclose(joint.returns(state, resampled)[:, 0], joint.returns(state, actions)[:, 0])


def test_against_plans_a_robot_meets_the_others_on_their_plans_and_never_itself() -> None:
    state, costs, actions = crowded_candidates(5, seed=2)  # K = 5 over 2 members: padded, dealt member-major
    lone = len(POS) - 1  # the robot driving into the left wall, 2.2 m from the nearest other
    actions[1:, :lone] = actions[0, :lone]  # the others sample their plans again; the robot samples anew
    trace = FleetRollout(ExactFleetModel(LAYOUT, members=2), costs, against_plans=True).trace(state, actions)
    others = trace.paths[0, :lone, 1:]  # (N-1, H, 2): the others on their plans
    for k in range(5):
        gap = (trace.paths[k, lone, 1:] - others).norm(dim=-1).amin(0)  # (H,) to the nearest other
        want = torch.where(gap <= SENSE_RADIUS, gap, torch.inf)
        torch.testing.assert_close(trace.agent_dist[k, lone], want)  # never itself on its plan, at a few cm
    assert not torch.allclose(trace.paths[1, lone], trace.paths[0, lone])


def test_candidates_follow_members_round_robin_and_every_member_is_used() -> None:
    _, obs, info = crowded_floor()
    costs = WarehouseCosts(LAYOUT, cell=0.5)
    state = FloorState.from_floor(obs, info, costs)
    model = FleetEnsemble(warehouse_layout(), 2, members=3, hidden=16).eval()
    actions = torch.zeros(4, len(POS), 3, 2)
    returns, paths = FleetRollout(model, costs).run(state, actions, torch.Generator().manual_seed(0))
    assert returns.shape == (4, len(POS)) and torch.isfinite(returns).all()
    assert not torch.allclose(paths[0], paths[1])  # same actions, different members (and draws)


def test_measuring_only_the_agents_and_shelves_near_each_robot_changes_nothing_on_a_busy_floor() -> None:
    # 60 robots and 6 humans after 30 ticks of traffic; plans of a second at up to full speed.
    floor = WarehouseFloor(60, 6, seed=2)
    obs, info = floor.reset(seed=2)
    for _ in range(30):
        obs, *_, info = floor.step(np.clip(obs[:, TASK_DIMS] - obs[:, POS_DIMS], -1, 1))
    costs = WarehouseCosts(floor.layout, cell=0.5)
    state = FloorState.from_floor(obs, info, costs)
    actions = torch.rand(4, 60, 10, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = ExactFleetModel(floor.layout)
    near, near_paths = FleetRollout(model, costs).run(state, actions)
    every, every_paths = FleetRollout(model, costs, others=10_000, rects=10_000).run(state, actions)
    torch.testing.assert_close(near_paths, every_paths, rtol=0, atol=0)
    torch.testing.assert_close(near, every, rtol=1e-6, atol=1e-4)
    assert (near < 0).all()  # the costs were charged
