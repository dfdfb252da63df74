"""FleetImaginedEnv on tiny floors: spaces, autoreset, the true physics as the model (known answers), the rewards
as the planner's costs, one member per floor, and floor ticks rebuilt from logs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from planners.fleet_imagined_env import UNSEEN, FleetImaginedEnv, FloorTicks
from planners.fleet_rollout import ExactFleetModel
from planners.warehouse_costs import WarehouseCosts
from worldmodel.dynamics import Prediction
from worldmodel.envs.fleet_collect import fleet_episodes
from worldmodel.envs.warehouse import OBS_DIM, POS_DIMS, SENSE_RADIUS, WarehouseFloor

# Four robots on layout_for(4): robots 0 and 1 overlap in the middle aisle, robot 0 driving into robot 1.
PLACES = np.array([[3.75, 6.0], [4.3, 6.0], [1.0, 1.0], [7.0, 10.0]])
SPEEDS = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])


def still_floor() -> tuple[WarehouseFloor, np.ndarray]:
    """The four robots without humans or actuation noise: the physics ExactFleetModel is exact for."""
    floor = WarehouseFloor(4, humans=0, action_noise=0.0)
    obs, _ = floor.reset(seed=0, options={"robots_pos": PLACES, "robots_vel": SPEEDS})
    return floor, obs


def one_tick(obs: np.ndarray) -> FloorTicks:
    return FloorTicks.from_rows(obs, np.full(len(obs), "floor-0"), np.zeros(len(obs), np.int64))


def exact_env(floors: int = 1, horizon: int = 5) -> tuple[FleetImaginedEnv, WarehouseFloor, np.ndarray]:
    floor, obs = still_floor()
    env = FleetImaginedEnv(ExactFleetModel(floor.layout), WarehouseCosts(floor.layout), one_tick(obs),
                           floors, horizon=horizon)
    return env, floor, obs


def test_spaces_and_shapes_are_robots_of_floors() -> None:
    env, _, obs = exact_env(floors=3)
    assert env.num_envs == 12 and env.single_observation_space.shape == (OBS_DIM,)
    assert env.single_action_space.shape == (2,) and env.action_space.shape == (12, 2)
    first, infos = env.reset(seed=0)
    assert first.shape == (12, OBS_DIM) and first.dtype == np.float32
    np.testing.assert_allclose(first.reshape(3, 4, OBS_DIM), np.broadcast_to(obs, (3, 4, OBS_DIM)), atol=1e-6)
    nxt, reward, terminated, truncated, infos = env.step(np.zeros((12, 2), np.float32))
    assert nxt.shape == (12, OBS_DIM) and reward.shape == (12,) and reward.dtype == np.float32
    assert terminated.shape == truncated.shape == infos["violation"].shape == infos["is_success"].shape == (12,)
    with pytest.raises(ValueError, match=r"\(F \* N, A\) = \(12, 2\)"):
        env.step(np.zeros((4, 2)))


def test_the_step_is_the_floors_when_the_model_is_the_physics() -> None:
    env, floor, _ = exact_env()
    env.reset(seed=0)
    for _ in range(3):
        actions = np.array([[1.0, 0.0], [0.0, 0.5], [-0.5, 0.2], [0.3, -1.0]], np.float32)
        imagined = env.step(actions)[0]
        real = floor.step(actions)[0]
        np.testing.assert_allclose(imagined, real, atol=1e-4)


def test_a_robots_next_observation_reflects_its_neighbours_action() -> None:
    """Robot 1 stands still with a zero action; robot 0, touching it, pushes on or brakes: robot 1 moves or not."""
    after = {}
    for name, push in (("push", 1.0), ("brake", -1.0)):
        env, floor, _ = exact_env()
        env.reset(seed=0)
        actions = np.zeros((4, 2), np.float32)
        actions[0, 0] = push
        after[name] = env.step(actions)[0]
        np.testing.assert_allclose(after[name], floor.step(actions)[0], atol=1e-4)  # the known answer
    moved = after["push"][1, POS_DIMS] - after["brake"][1, POS_DIMS]
    assert moved[0] > 0.01  # pushed along +x by its neighbour's action alone
    np.testing.assert_allclose(after["push"][2:], after["brake"][2:], atol=1e-6)  # robots far away: unchanged


def test_floors_truncate_together_and_restart_on_the_next_step() -> None:
    env, _, obs = exact_env(floors=2, horizon=2)
    env.reset(seed=1)
    act = np.full((8, 2), 0.5, np.float32)
    assert not env.step(act)[3].any()
    _, reward, terminated, truncated, _ = env.step(act)
    assert truncated.all() and not terminated.any() and (reward != 0).any()
    first, reward, terminated, truncated, _ = env.step(act)  # next-step autoreset: the actions are ignored
    assert not truncated.any() and not terminated.any() and (reward == 0).all()
    np.testing.assert_allclose(first.reshape(2, 4, OBS_DIM), np.broadcast_to(obs, (2, 4, OBS_DIM)), atol=1e-6)
    assert not env.step(act)[3].any()


def test_rewards_are_the_planners_costs() -> None:
    env, _, _ = exact_env()
    env.reset(seed=0)
    nxt, reward, _, _, infos = env.step(np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, -1.0], [1.0, 1.0]], np.float32))
    assert not infos["is_success"].any()  # every robot still holds the task the step is charged against
    pos, costs = env.positions[0], env.costs  # (N, 2)
    dist = torch.cdist(pos, pos)
    dist = torch.where((dist > 0) & (dist <= SENSE_RADIUS), dist, torch.inf)
    target = costs.targets(torch.as_tensor(nxt[:, 4:6]))
    expected = costs.progress(pos, target) + costs.shelves(pos) + costs.agents(dist)
    np.testing.assert_allclose(reward, expected.numpy(), rtol=1e-5, atol=1e-5)
    near = costs.agents(dist)
    assert (near[:2] < 0).all() and (near[2:] == 0).all()  # robots 0 and 1 are still within the margin


class _Offsets(torch.nn.Module):
    """E members: member e moves every robot by (e, 0) metres, no noise; neighbour actions unused."""

    members = 3

    def forward(self, obs: torch.Tensor, action: torch.Tensor, neighbour_actions: torch.Tensor) -> Prediction:
        shift = torch.arange(self.members, dtype=obs.dtype)[:, None, None] * torch.tensor([1.0, 0, 0, 0])
        mean = obs[None, :, :4] + shift  # (E, B, P)
        return Prediction(mean, torch.zeros_like(mean))


def test_each_floor_follows_one_member_drawn_per_episode() -> None:
    floor, obs = still_floor()
    env = FleetImaginedEnv(_Offsets(), WarehouseCosts(floor.layout), one_tick(obs), floors=16, horizon=1)
    seen = set()
    for seed in range(3):
        env.reset(seed=seed)
        before = env.positions
        env.step(np.zeros((64, 2), np.float32))
        dx = (env.positions - before)[:, :3, 0]  # (F, 3) robot 3 (x = 7) may be stopped by the floor's edge
        assert torch.allclose(dx, dx[:, :1].expand_as(dx))  # one member's shift for every robot of a floor
        seen |= {round(float(v)) for v in dx[:, 0]}
    assert seen == {0, 1, 2}


def test_floor_ticks_rebuild_whole_ticks_and_each_seen_human_once() -> None:
    episode = next(fleet_episodes(20, 1, seed=3, steps=30))
    rows = episode.transitions()
    ticks = FloorTicks.from_rows(rows.obs, rows.scene, rows.t)
    assert ticks.obs.shape == (30, 20, OBS_DIM) and ticks.robots == 20
    np.testing.assert_array_equal(ticks.obs.numpy(), episode.obs)  # ticks in time order, robots in log order
    real = torch.as_tensor(episode.humans[:30], dtype=torch.float32)  # (T, H, 2) before each tick
    seen = ticks.humans_pos[..., 0] > UNSEEN / 2  # (T, U)
    gap = torch.cdist(ticks.humans_pos, real).amin(-1)  # (T, U) to the nearest real human
    assert seen.any() and (gap[seen] < 1e-4).all()
    assert (seen.sum(1) <= real.shape[1]).all()  # each human at most once
    # A partial tick (one robot missing) is dropped; logs without scenes are refused.
    part = FloorTicks.from_rows(rows.obs[1:], rows.scene[1:], rows.t[1:])
    assert len(part.obs) == 29
    with pytest.raises(ValueError, match="no logged row names a scene"):
        FloorTicks.from_rows(rows.obs, np.full(len(rows), ""), rows.t)


def test_a_robot_at_its_task_takes_the_next_as_the_floor_does() -> None:
    """Robot 2 placed on its pick point reaches it on the first step: it heads for a station next, the step's
    reward and progress counted against the pick."""
    floor = WarehouseFloor(4, humans=0, action_noise=0.0)
    task = floor.reset(seed=0)[0][2, 4:6]
    places = PLACES.copy()
    places[2] = task + [0.1, 0.0]
    obs, _ = floor.reset(seed=0, options={"robots_pos": places})
    assert np.allclose(obs[2, 4:6], task) and not np.isin(task, floor.layout.stations).all()
    costs = WarehouseCosts(floor.layout)
    env = FleetImaginedEnv(ExactFleetModel(floor.layout), costs, one_tick(obs), 1)
    _, infos = env.reset(seed=0)
    nxt, reward, _, _, infos = env.step(np.zeros((4, 2), np.float32))
    assert infos["is_success"].tolist() == [False, False, True, False]
    stations = floor.layout.stations
    assert np.abs(stations - nxt[2, 4:6]).max(-1).min() < 1e-6  # the new task is a station
    np.testing.assert_allclose(nxt[[0, 1, 3], 4:6], obs[[0, 1, 3], 4:6])  # the others keep theirs
    held = costs.fields.lookup(env.positions[0, 2], costs.targets(torch.as_tensor(task[None]))[0])
    assert infos["aisle_distance"][2] == pytest.approx(float(held), abs=1e-6)
    assert reward[2] == pytest.approx(-costs.weights.progress * float(held))
