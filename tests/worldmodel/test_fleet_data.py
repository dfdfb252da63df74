"""Neighbours' actions rebuilt from fleet logs: each slot matched to the robot at the same tick."""

from __future__ import annotations

import numpy as np

from worldmodel.data.batch import Transitions
from worldmodel.fleet_data import ObsLayout, match_neighbour_actions, neighbour_actions

# [x, y, vx, vy, task (2), 2 slots of (dx, dy, dvx, dvy, kind), shelf (2)]
LAYOUT = ObsLayout(phys=slice(0, 4), pos=slice(0, 2), task=slice(4, 6), neighbours=slice(6, 16),
                   shelf=slice(16, 18), slots=2)
ROBOT, HUMAN = 1, 2


def _floor(pos: np.ndarray, humans: np.ndarray) -> np.ndarray:
    """Observations (N, 18) of robots at ``pos`` (N, 2): each slot the nearest other agent (robots then
    ``humans`` (H, 2)), nearest first, empty beyond 2 m."""
    others = np.concatenate([pos, humans])  # (N + H, 2)
    kinds = np.r_[np.full(len(pos), ROBOT), np.full(len(humans), HUMAN)]
    rel = others[None] - pos[:, None]  # (N, N + H, 2)
    dist = np.linalg.norm(rel, axis=-1)
    dist[np.arange(len(pos)), np.arange(len(pos))] = np.inf  # never itself
    obs = np.zeros((len(pos), 18), dtype=np.float32)
    obs[:, 0:2] = pos
    for slot in range(2):  # two slots: a literal toy, not a hot path
        j = np.argsort(dist, 1)[:, slot]
        near = dist[np.arange(len(pos)), j] < 2.0
        cols = slice(6 + 5 * slot, 11 + 5 * slot)
        obs[near, cols] = np.c_[rel[np.arange(len(pos)), j][near], np.zeros((near.sum(), 2)), kinds[j][near]]
    return obs


def _logs(ticks: list[tuple[str, int, np.ndarray, np.ndarray]]) -> Transitions:
    """Rows of several ticks (scene, t, robot positions (N, 2), human positions (H, 2)), actions = 10 * robot id
    + (0, 1), rows shuffled so matching cannot lean on their order."""
    obs, actions, scene, t = [], [], [], []
    for name, step, pos, humans in ticks:
        obs.append(_floor(pos, humans))
        ids = np.arange(len(pos))
        actions.append(np.c_[10.0 * ids, 10.0 * ids + 1])
        scene += [name] * len(pos)
        t += [step] * len(pos)
    order = np.random.default_rng(0).permutation(len(scene))
    obs_, act_ = np.concatenate(obs)[order], np.concatenate(actions)[order]
    return Transitions.build(obs_, act_, np.zeros(len(order)), obs_, np.zeros(len(order), bool),
                             np.zeros(len(order), bool), np.array(scene, dtype=object)[order], "r",
                             np.array(t)[order], scene=np.array(scene, dtype=object)[order])


def test_each_robot_slot_gets_the_action_of_the_robot_it_holds() -> None:
    pos = np.array([[0.0, 0.0], [0.5, 0.0], [5.0, 5.0], [5.0, 5.7]])
    humans = np.array([[0.0, 0.6]])
    # Two ticks of one floor and one of another, robots at the same places: only (scene, t) tells them apart.
    data = _logs([("a", 0, pos, humans), ("a", 1, pos + 0.01, humans), ("b", 0, pos, np.zeros((0, 2)))])
    got = neighbour_actions(data, LAYOUT)  # (B, 2, 2)
    slots = LAYOUT.slot_view(data.obs)  # (B, 2, 5)
    pos_of = data.obs[:, :2]
    for row in range(len(data)):  # the check walks rows one by one; the code under test does not
        for slot in range(2):
            kind = slots[row, slot, 4]
            if kind != ROBOT:
                np.testing.assert_array_equal(got[row, slot], 0.0)
                continue
            target = pos_of[row] + slots[row, slot, :2]
            same_tick = (data.scene == data.scene[row]) & (data.t == data.t[row])
            source = np.flatnonzero(same_tick & (np.abs(pos_of - target).max(1) < 1e-6))
            assert len(source) == 1
            np.testing.assert_array_equal(got[row, slot], data.actions[source[0]])
    assert (got != 0).any() and (slots[..., 4] == HUMAN).any()


def test_robots_whose_rows_are_missing_and_lone_agents_get_zeros() -> None:
    pos = np.array([[0.0, 0.0], [0.5, 0.0], [10.0, 10.0]])
    data = _logs([("a", 3, pos, np.zeros((0, 2)))])
    second = np.flatnonzero(np.abs(data.obs[:, 0] - 0.5) < 1e-6)[0]
    kept = data.select(np.arange(len(data)) != second)  # robot 1's row is not in the logs
    assert (LAYOUT.slot_view(kept.obs)[..., 4] == ROBOT).sum() == 1  # robot 0 still sees it
    assert not neighbour_actions(kept, LAYOUT).any()
    lone = match_neighbour_actions(np.array(["", "", ""]), data.t, data.obs, data.actions, LAYOUT)
    assert not lone.any()


def test_empty_logs_and_float32_rounding() -> None:
    empty = match_neighbour_actions(np.array([], dtype=str), np.zeros(0, int), np.zeros((0, 18), np.float32),
                                    np.zeros((0, 2), np.float32), LAYOUT)
    assert empty.shape == (0, 2, 2)
    far = np.array([[23.123456, 17.654321], [23.523456, 17.254321]])  # float32 keeps ~1e-6 m here
    got = neighbour_actions(_logs([("w", 0, far, np.zeros((0, 2)))]), LAYOUT)
    assert sorted(got[:, 0, 1].tolist()) == [1.0, 11.0]
