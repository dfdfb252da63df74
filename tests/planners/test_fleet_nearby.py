"""The fleet rollout's fast path of the warehouse features: ``observe_nearby`` is ``observe`` over the agents
and shelves near each robot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from planners.fleet_rollout import NEARBY_OTHERS, NEARBY_RECTS
from worldmodel.envs.warehouse import KIND_HUMAN, KIND_ROBOT, POS_DIMS, TASK_DIMS, VEL_DIMS, WarehouseFloor
from worldmodel.envs.warehouse_features import nearby, observe, observe_nearby
from worldmodel.envs.warehouse_layout import Layout


def busy_floor(robots: int, humans: int, ticks: int = 30) -> tuple[WarehouseFloor, dict[str, torch.Tensor]]:
    """A floor after ``ticks`` of robots driving at their targets: traffic, contacts, humans among them."""
    floor = WarehouseFloor(robots, humans, seed=3)
    obs, info = floor.reset(seed=3)
    for _ in range(ticks):
        obs, *_, info = floor.step(np.clip(obs[:, TASK_DIMS] - obs[:, POS_DIMS], -1, 1))
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return floor, {"pos": t(obs[:, POS_DIMS]), "vel": t(obs[:, VEL_DIMS]), "task": t(info["task"]),
                   "humans_pos": t(info["humans_pos"]), "humans_vel": t(info["humans_vel"])}


def both(s: dict[str, torch.Tensor], pos: torch.Tensor, vel: torch.Tensor, layout: Layout, others: int, rects: int):
    """``observe`` and ``observe_nearby`` of robots at pos, vel (K, N, 2), the near sets chosen at ``s``."""
    k, n, u = pos.shape[0], len(s["pos"]), len(s["humans_pos"])
    kind = [KIND_ROBOT] * n + [KIND_HUMAN] * u
    others_pos = torch.cat([pos, s["humans_pos"].expand(k, u, 2)], 1)
    others_vel = torch.cat([vel, s["humans_vel"].expand(k, u, 2)], 1)
    near = nearby(s["pos"], torch.cat([s["pos"], s["humans_pos"]]), layout, others, rects)
    return (observe(pos, vel, s["task"], others_pos, others_vel, kind, layout),
            observe_nearby(pos, vel, s["task"], others_pos, others_vel, kind, near))


def test_with_every_agent_and_rectangle_near_it_is_observe_exactly() -> None:
    floor, s = busy_floor(12, 3)
    g = torch.Generator().manual_seed(0)
    pos, vel = s["pos"] + 0.3 * torch.randn(4, 12, 2, generator=g), s["vel"] + torch.randn(4, 12, 2, generator=g)
    (obs, index), sensed = both(s, pos, vel, floor.layout, others=100, rects=1000)
    assert torch.equal(sensed.obs, obs) and torch.equal(sensed.slot_index, index)
    # The distances the costs reuse (with every agent near, index i of them is other i): the slots'
    # agents' centre distances, inf for the robot itself.
    n = torch.arange(12)
    assert torch.isinf(sensed.others_dist[:, n, n]).all()
    filled = index >= 0
    others = torch.cat([pos, s["humans_pos"].expand(4, -1, 2)], 1)  # (K, O, 2)
    slot_pos = others.gather(1, index.clamp_min(0).flatten(1)[..., None].expand(-1, -1, 2)).view(4, 12, -1, 2)
    torch.testing.assert_close(sensed.others_dist.gather(-1, index.clamp_min(0))[filled],
                               (slot_pos - pos[:, :, None]).norm(dim=-1)[filled])
    assert sensed.rect_gap.shape == (4, 12, len(floor.layout.obstacles))


def test_on_a_busy_floor_the_nearest_agents_and_shelves_of_now_hold_those_of_a_plan() -> None:
    # 80 robots in traffic, each moved by up to 0.75 m along each axis, the near sets chosen where they were.
    floor, s = busy_floor(80, 8)
    g = torch.Generator().manual_seed(1)
    pos = s["pos"] + (torch.rand(8, 80, 2, generator=g) * 2 - 1) * 0.75
    (obs, index), sensed = both(s, pos, s["vel"].expand(8, 80, 2), floor.layout, NEARBY_OTHERS, NEARBY_RECTS)
    assert torch.equal(sensed.obs, obs) and torch.equal(sensed.slot_index, index)


def test_fewer_agents_than_slots_and_bad_sizes() -> None:
    floor, s = busy_floor(2, 0, ticks=0)
    (obs, index), sensed = both(s, s["pos"][None], s["vel"][None], floor.layout, others=24, rects=8)
    assert torch.equal(sensed.obs, obs) and torch.equal(sensed.slot_index, index)
    with pytest.raises(ValueError, match="others and rects must be >= 1"):
        nearby(s["pos"], s["pos"], floor.layout, 0, 8)
