"""The warehouse features: neighbour slots (order, kinds, padding, which agent), the shelf vector, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldmodel.envs.warehouse import (
    KIND_HUMAN,
    KIND_ROBOT,
    NEIGHBOUR_DIMS,
    NEIGHBOURS,
    OBS_DIM,
    PHYS_DIMS,
    POS_DIMS,
    SHELF_DIMS,
    SLOT_SIZE,
    TASK_DIMS,
    VEL_DIMS,
    WarehouseFloor,
)
from worldmodel.envs.warehouse_features import observe
from worldmodel.envs.warehouse_layout import Layout

FLOOR = Layout(10.0, 10.0, [[6.0, 4.0, 7.0, 8.0]], stations=[[1.0, 1.0]], picks=[[9.0, 9.0]])


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_slots_hold_the_nearest_sensed_agents_nearest_first_with_kinds_and_zero_padding() -> None:
    # Robot 0 at (3, 5); others: itself, a robot 2.5 m right, a human 2 m up, a robot 1 m left,
    # a robot 4 m away (beyond sensing).
    others_pos = _t([[3.0, 5.0], [5.5, 5.0], [3.0, 7.0], [2.0, 5.0], [3.0, 1.0]])
    others_vel = _t([[0.5, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    kind = [KIND_ROBOT, KIND_ROBOT, KIND_HUMAN, KIND_ROBOT, KIND_ROBOT]
    obs, slot_index = observe(others_pos[:1], others_vel[:1], _t([[9.0, 9.0]]), others_pos, others_vel, kind, FLOOR)
    assert obs.shape == (1, OBS_DIM) and slot_index.tolist() == [[3, 2, 1, -1]]
    slots = obs[0, NEIGHBOUR_DIMS].reshape(NEIGHBOURS, SLOT_SIZE)
    expected = [
        [-1.0, 0.0, -0.5, 0.0, KIND_ROBOT],
        [0.0, 2.0, 0.5, 0.0, KIND_HUMAN],
        [2.5, 0.0, -0.5, 1.0, KIND_ROBOT],
        [0.0, 0.0, 0.0, 0.0, 0.0],
    ]
    np.testing.assert_allclose(slots.numpy(), expected)
    np.testing.assert_allclose(obs[0, PHYS_DIMS].numpy(), [3.0, 5.0, 0.5, 0.0])
    np.testing.assert_allclose(obs[0, TASK_DIMS].numpy(), [9.0, 9.0])


def test_fewer_agents_than_slots_and_nobody_in_range_give_empty_slots() -> None:
    pos = _t([[1.0, 1.0], [9.0, 9.0]])
    obs, slot_index = observe(pos, torch.zeros(2, 2, dtype=torch.float64), pos, pos, torch.zeros(2, 2, dtype=torch.float64),
                              [KIND_ROBOT, KIND_ROBOT], FLOOR)
    assert slot_index.tolist() == [[-1] * NEIGHBOURS] * 2
    assert torch.all(obs[:, NEIGHBOUR_DIMS] == 0)


@pytest.mark.parametrize(
    ("point", "vector"),
    [((5.0, 5.0), (1.0, 0.0)), ((1.0, 0.5), (0.0, -0.5)), ((5.0, 9.0), (0.0, 1.0)), ((5.5, 3.5), (0.5, 0.5)), ((9.6, 2.0), (0.4, 0.0))],
)
def test_the_shelf_vector_points_to_the_nearest_point_of_the_nearest_shelf_or_wall(point, vector) -> None:
    pos = _t([point])
    obs, _ = observe(pos, torch.zeros(1, 2, dtype=torch.float64), pos, pos, torch.zeros(1, 2, dtype=torch.float64),
                     [KIND_ROBOT], FLOOR)
    np.testing.assert_allclose(obs[0, SHELF_DIMS].numpy(), vector, atol=1e-12)


def test_leading_batch_dims_give_what_each_batch_entry_gives_alone() -> None:
    g = torch.Generator().manual_seed(0)
    k, n, h = 3, 6, 2
    pos = torch.rand(k, n, 2, generator=g) * 5 + 2
    vel = torch.randn(k, n, 2, generator=g)
    task = torch.rand(k, n, 2, generator=g) * 10
    humans_pos, humans_vel = torch.rand(h, 2, generator=g) * 5 + 2, torch.randn(h, 2, generator=g)
    kind = [KIND_ROBOT] * n + [KIND_HUMAN] * h
    # The humans are shared by every candidate: (O, 2) others broadcast against (K, N, 2) robots.
    others_pos = torch.cat([pos, humans_pos.expand(k, h, 2)], dim=1)
    others_vel = torch.cat([vel, humans_vel.expand(k, h, 2)], dim=1)
    obs, slot_index = observe(pos, vel, task, others_pos, others_vel, kind, FLOOR)
    assert obs.shape == (k, n, OBS_DIM) and slot_index.shape == (k, n, NEIGHBOURS)
    for i in range(k):
        one_obs, one_index = observe(pos[i], vel[i], task[i], others_pos[i], others_vel[i], kind, FLOOR)
        torch.testing.assert_close(obs[i], one_obs)
        assert torch.equal(slot_index[i], one_index)
    # Others without the batch dim broadcast too.
    obs_h, index_h = observe(pos, vel, task, humans_pos, humans_vel, [KIND_HUMAN] * h, FLOOR)
    for i in range(k):
        torch.testing.assert_close(obs_h[i], observe(pos[i], vel[i], task[i], humans_pos, humans_vel, [KIND_HUMAN] * h, FLOOR)[0])


def test_the_env_observation_is_observe_of_its_physical_states_and_slot_index_names_the_agent() -> None:
    floor = WarehouseFloor(40, 6, seed=0)
    obs, info = floor.reset()
    for _ in range(20):
        obs, *_, info = floor.step(np.clip(obs[:, TASK_DIMS] - obs[:, POS_DIMS], -1, 1))
    pos = torch.from_numpy(np.concatenate([obs[:, POS_DIMS], info["humans_pos"]]))
    vel = torch.from_numpy(np.concatenate([obs[:, VEL_DIMS], info["humans_vel"]]))
    kind = [KIND_ROBOT] * 40 + [KIND_HUMAN] * 6
    again, slot_index = observe(pos[:40], vel[:40], torch.from_numpy(info["task"]), pos, vel, kind, floor.layout)
    np.testing.assert_array_equal(again.numpy(), obs)
    np.testing.assert_array_equal(slot_index.numpy(), info["slot_index"])
    # Each filled slot's (dx, dy) is the position of the agent slot_index names, minus the robot's own.
    slots = obs[:, NEIGHBOUR_DIMS].reshape(40, NEIGHBOURS, SLOT_SIZE)
    filled = info["slot_index"] >= 0
    assert filled.any()
    named = pos.numpy()[info["slot_index"]] - obs[:, None, POS_DIMS]  # (N, M, 2)
    np.testing.assert_allclose(slots[..., :2][filled], named[filled], atol=1e-6)
    np.testing.assert_array_equal(slots[..., 4][filled], np.array(kind)[info["slot_index"][filled]])
