"""Constraint margins, the per-agent action projection and the constraint cost terms, on hand-computed states."""

from __future__ import annotations

import torch

from planners.constraints import Constraint, kind_margins, margins, project
from planners.objectives import (ACTION_HIGH, ACTION_LOW, BOX, MAX_SPEED, POS_DIMS, VEL_DIMS, ZONES, AgentBox,
                                 SpeedLimit)
from worldmodel.envs import nav2d

INF = float("inf")


def _states(*rows: tuple[float, float, float, float]) -> torch.Tensor:
    """One agent's states [x, y, vx, vy] as (X=1, N=1, R, S)."""
    return torch.tensor(rows)[None, None]


def test_each_kind_has_its_margin_and_absent_constraints_are_infinite() -> None:
    params = {ZONES: torch.tensor([[[3.0, 0.0, 1.0], [0.0, 0.0, 0.0]]]),  # the second slot pads
              BOX: torch.tensor([[[-1.0, -2.0], [4.0, 0.5]]]), MAX_SPEED: torch.tensor([2.0])}
    got = kind_margins(_states((0.0, 0.0, 0.6, 0.8), (3.5, 0.0, 3.0, 4.0)), params)  # (1, 1, 2, 3)
    expected = [[3.0 - 1.0, 0.5, 2.0 - 1.0], [0.5 - 1.0, 0.5, 2.0 - 5.0]]
    torch.testing.assert_close(got[0, 0], torch.tensor(expected))
    assert (kind_margins(_states((0.0, 0.0, 9.0, 9.0)), {}) == INF).all()
    unbounded = {BOX: torch.tensor([[[-INF, -INF], [INF, INF]]]), MAX_SPEED: torch.tensor([INF])}
    assert (kind_margins(_states((5.0, 5.0, 9.0, 9.0)), unbounded) == INF).all()


def test_margins_take_the_worst_member_step_and_kind() -> None:
    # (E=2, N=1, M=2, H=2, S=4): sequence 0 stays clear; sequence 1 enters the zone in member 1's second step.
    traj = torch.zeros(2, 1, 2, 2, 4)
    traj[..., 0] = -1.0
    traj[1, 0, 1, 1, 0] = 2.8
    worst, kind = margins(traj, {ZONES: torch.tensor([[[3.0, 0.0, 1.0]]]), MAX_SPEED: torch.tensor([5.0])})
    torch.testing.assert_close(worst, torch.tensor([[4.0 - 1.0, 0.2 - 1.0]]))
    assert kind.dtype == torch.int8 and kind.tolist() == [[Constraint.NO_FLY_ZONE, Constraint.NO_FLY_ZONE]]
    worst, kind = margins(traj, {})
    assert (worst == INF).all() and (kind == Constraint.NONE).all()
    assert [c.reason for c in Constraint] == [None, "no_fly_zone", "state_box", "speed", "agent_contact", "shelf"]


def test_project_keeps_every_sample_inside_each_agents_bounds_within_the_box() -> None:
    low, high = -torch.ones(2), torch.ones(2)
    params = {ACTION_LOW: torch.tensor([[-0.5, -2.0], [0.0, 0.0]]), ACTION_HIGH: torch.tensor([[0.5, 0.2], [2.0, 0.1]])}
    lo, hi = torch.tensor([[-0.5, -1.0], [0.0, 0.0]]), torch.tensor([[0.5, 0.2], [1.0, 0.1]])  # intersected
    samples = torch.randn(2, 16, 5, 2, generator=torch.Generator().manual_seed(0)) * 3  # (N, K, H, A)
    out = project(samples, params, low, high)
    assert out is samples  # in place
    assert (samples >= lo[:, None, None]).all() and (samples <= hi[:, None, None]).all()
    assert (samples == lo[:, None, None]).any() and (samples == hi[:, None, None]).any()
    plans = project(torch.full((2, 5, 2), 9.0), params, low, high)  # (N, H, A)
    assert (plans == hi[:, None]).all()
    assert (project(torch.full((2, 2), -9.0), None, low, high) == -1).all()  # (N, A), box only


def test_agent_box_and_speed_limit_cost_only_where_given() -> None:
    new_obs = _states((1.0, 0.0, 0.0, 0.0), (0.5, 0.0, 3.0, 4.0))  # (X, N, R, S)
    box = AgentBox(margin=0.3)
    assert box(None, None, new_obs, {}).tolist() == [[[0.0, 0.0]]]
    params = {BOX: torch.tensor([[[-1.0, -1.0], [0.6, 1.0]]]), MAX_SPEED: torch.tensor([4.0])}
    # 1.0 is 0.4 past the side and 0.7 past it shrunk by the margin, plus the step outside; 0.5 is 0.2 past.
    torch.testing.assert_close(box(None, None, new_obs, params), torch.tensor([[[-100 * (0.7 + 1), -100 * 0.2]]]))
    speed = SpeedLimit(margin=0.1)
    assert speed(None, None, new_obs, {}).tolist() == [[[0.0, 0.0]]]
    torch.testing.assert_close(speed(None, None, new_obs, params), torch.tensor([[[0.0, -100 * (1.1 + 1)]]]))
    unbounded = {BOX: torch.tensor([[[-INF, -INF], [INF, INF]]]), MAX_SPEED: torch.tensor([INF])}
    assert box(None, None, new_obs, unbounded).tolist() == speed(None, None, new_obs, unbounded).tolist() == [[[0, 0]]]


def test_the_cost_terms_have_finite_gradients_at_rest_and_on_unbounded_agents() -> None:
    new_obs = torch.zeros(1, 1, 1, 4, requires_grad=True)
    unbounded = {BOX: torch.tensor([[[-INF, -INF], [INF, INF]]]), MAX_SPEED: torch.tensor([INF])}
    for params in (unbounded, {BOX: torch.tensor([[[-1.0, -1.0], [1.0, 1.0]]]), MAX_SPEED: torch.tensor([1.0])}):
        (AgentBox()(None, None, new_obs, params) + SpeedLimit()(None, None, new_obs, params)).sum().backward()
        assert torch.isfinite(new_obs.grad).all()


def test_the_default_dims_are_nav2ds() -> None:
    assert list(range(6))[nav2d.POS_DIMS] == list(POS_DIMS) and list(range(6))[nav2d.VEL_DIMS] == list(VEL_DIMS)
