"""The shield on a toy with known answers: a 2-D point mass whose ensemble is exactly linear.

State [x, y, vx, vy], action an acceleration in [-1, 1]^2, DT 0.5: v' = v + a DT, p' = p + v' DT.
From rest, full thrust along x reaches x = 0.25, 0.75, 1.5 in three steps, so a zone of radius 0.5
centred at (1.5, 0) is entered on the third step; the zero action stays at the origin.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from planners.constraints import Constraint
from planners.objectives import BOX, GOAL, MAX_SPEED, ZONES, GoalReward, Objective
from planners.shield import Shield, ShieldConfig
from worldmodel.dynamics import Prediction
from worldmodel.nn import Normalizer, expand_members

DT = 0.5
LOW, HIGH = -torch.ones(2), torch.ones(2)
RIGHT, UP, LEFT, STILL = (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, 0.0)


class PointMass(nn.Module):
    """E members of the exact point mass; ``drift`` (E,) adds that much to each member's x per step."""

    def __init__(self, members: int = 3, drift: tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.members, self.probabilistic, self.obs_dim, self.act_dim = members, True, 4, 2
        self.register_buffer("drift", torch.tensor(drift or (0.0,) * members))
        self.delta_norm = Normalizer(4)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> Prediction:
        x, u = expand_members(obs, self.members), expand_members(action, self.members)  # (E, B, *)
        v = x[..., 2:] + u * DT
        p = x[..., :2] + v * DT
        p = p + torch.stack([self.drift[:, None].expand_as(p[..., 0]), torch.zeros_like(p[..., 0])], -1)
        mean = torch.cat([p, v], -1)
        return Prediction(mean, torch.full_like(mean, 1e-6))


def _held(*actions: tuple[float, float], steps: int = 3) -> torch.Tensor:
    """One agent's sequences, each action held: (1, M, Hs, A)."""
    return torch.tensor(actions)[None, :, None].expand(1, len(actions), steps, 2).clone()


def _shield(model: nn.Module | None = None, **cfg: float) -> Shield:
    return Shield(model or PointMass(), horizon=3, objective=Objective([GoalReward()]), cfg=ShieldConfig(**cfg))


ORIGIN = torch.zeros(1, 4)
ZONE = {ZONES: torch.tensor([[[1.5, 0.0, 0.5]]]), GOAL: torch.tensor([[0.0, 2.0]])}


def test_an_action_into_a_zone_within_three_steps_is_replaced_by_the_best_safe_alternative() -> None:
    result = _shield().apply(ORIGIN, _held(RIGHT)[:, 0], _held(STILL, UP, LEFT), ZONE)
    assert result.shielded.tolist() == [True]
    assert result.constraint.tolist() == [Constraint.NO_FLY_ZONE] and Constraint(1).reason == "no_fly_zone"
    assert result.actions.tolist() == [list(UP)]  # the safe alternative closest to the goal
    assert result.margin.item() == pytest.approx((1.5**2 + 0.25**2) ** 0.5 - 0.5)  # closest at step 1, y = 0.25


def test_a_safe_action_passes_untouched() -> None:
    result = _shield().apply(ORIGIN, _held(UP)[:, 0], _held(STILL, LEFT), ZONE)
    assert not result.shielded.any() and result.constraint.tolist() == [0]
    assert result.actions.tolist() == [list(UP)]


def test_one_disagreeing_member_predicting_the_violation_triggers_the_shield() -> None:
    # Members 0 and 1 keep the agent at rest; member 2 drifts 0.5 in x per step, into the zone by step 3.
    shield = _shield(PointMass(drift=(0.0, 0.0, 0.5)), spread=0.0)
    result = shield.apply(ORIGIN, _held(STILL)[:, 0], _held(LEFT), ZONE)
    assert result.shielded.tolist() == [True] and result.actions.tolist() == [list(LEFT)]
    _, worst, _ = shield.check(ORIGIN, _held(STILL), ZONE)
    assert worst.item() == pytest.approx(1.5 - 1.5 - 0.5)  # the worst member ends at the zone's centre


def test_the_members_spread_is_taken_off_the_margin() -> None:
    # Member 2 drifts 0.2 per step: at step 3 the members sit at x = 0, 0, 0.6, all 0.4 or more outside
    # the zone's edge, with a population std of sqrt(0.08) = 0.283 in x.
    unsure = PointMass(drift=(0.0, 0.0, 0.2))
    still, left = _held(STILL)[:, 0], _held(LEFT)
    assert not _shield(unsure, spread=0.0).apply(ORIGIN, still, left, ZONE).shielded.item()
    shielded = _shield(unsure, spread=2.0).apply(ORIGIN, still, left, ZONE)
    assert shielded.shielded.item() and shielded.actions.tolist() == [list(LEFT)]
    _, worst, _ = _shield(unsure, spread=2.0).check(ORIGIN, _held(STILL), ZONE)
    assert worst.item() == pytest.approx(1.5 - 0.6 - 0.5 - 2 * 0.08**0.5, abs=1e-5)
    # Members that agree lose nothing to it.
    _, agreed, _ = _shield(spread=2.0).check(ORIGIN, _held(STILL), ZONE)
    assert agreed.item() == pytest.approx(1.5 - 0.5)


def test_box_and_speed_limits_are_shielded_with_their_codes() -> None:
    box = {BOX: torch.tensor([[[-1.0, -1.0], [0.5, 1.0]]]), GOAL: torch.tensor([[0.0, 2.0]])}
    result = _shield().apply(ORIGIN, _held(RIGHT)[:, 0], _held(STILL), box)
    assert result.shielded.tolist() == [True] and result.constraint.tolist() == [Constraint.STATE_BOX]
    speed = {MAX_SPEED: torch.tensor([0.8]), GOAL: torch.tensor([[0.0, 2.0]])}
    result = _shield().apply(ORIGIN, _held(RIGHT)[:, 0], _held(STILL), speed)
    assert result.constraint.tolist() == [Constraint.SPEED] and result.actions.tolist() == [list(STILL)]
    assert result.margin.item() == pytest.approx(0.8)


def test_with_no_safe_alternative_the_largest_worst_case_margin_wins() -> None:
    inside = torch.tensor([[1.5, 0.0, 0.0, 0.0]])  # at the zone's centre
    result = _shield().apply(inside, _held(STILL)[:, 0], _held(UP, LEFT), ZONE)
    # STILL stays at the centre (margin -0.5); UP and LEFT are 0.25 out after the first step (-0.25).
    assert result.shielded.tolist() == [True] and result.margin.item() == pytest.approx(0.25 - 0.5)


def test_ties_go_to_the_smallest_change_and_nan_predictions_are_unsafe() -> None:
    goal = {ZONES: ZONE[ZONES], GOAL: torch.tensor([[-5.0, 0.0]])}
    far = torch.tensor([[-5.0, 0.0, 0.0, 0.0]])  # far from the zone: every sequence is safe
    chosen = torch.full((1, 3, 2), float("nan"))  # a diverging plan: its prediction is NaN
    result = _shield().apply(far, chosen, _held(UP, (0.0, -1.0), STILL), goal)
    assert result.shielded.tolist() == [True]
    assert result.actions.tolist() == [list(STILL)]  # STILL stays at the goal: the best return


def test_agents_are_independent_and_batched() -> None:
    obs = torch.zeros(2, 4)
    params = {ZONES: torch.tensor([[[1.5, 0.0, 0.5]], [[0.0, 0.0, 0.0]]]), GOAL: torch.tensor([[0.0, 2.0]] * 2)}
    chosen = _held(RIGHT)[:, 0].expand(2, -1, -1)
    result = _shield().apply(obs, chosen, _held(UP).expand(2, -1, -1, -1), params)
    assert result.shielded.tolist() == [True, False]
    assert result.actions.tolist() == [list(UP), list(RIGHT)] and result.margin[1].item() == float("inf")


def test_braking_opposes_the_velocity_and_the_settings_are_checked() -> None:
    moving = torch.tensor([[0.0, 0.0, 0.4, -2.0]])
    brake = _shield().braking(moving, {}, LOW, HIGH)  # (1, Hs, A)
    assert brake[0, 0].tolist() == [-1.0, 1.0]  # -10 v, clamped into the box
    with pytest.raises(ValueError, match="clearance must be >= 0, got -1"):
        ShieldConfig(clearance=-1.0)
    with pytest.raises(ValueError, match="spread must be >= 0, got -1"):
        ShieldConfig(spread=-1.0)
    with pytest.raises(ValueError, match="horizon must be an integer >= 1, got 0"):
        Shield(PointMass(), horizon=0)


def test_an_agent_inside_a_zone_escapes_rather_than_brakes() -> None:
    """Already inside a zone, every sequence starts in violation: the one with the largest worst-case margin
    is the way out, not braking in place."""
    shield = _shield()
    obs = torch.tensor([[0.2, 0.0, 0.0, 0.0]])
    params = {ZONES: torch.tensor([[[0.0, 0.0, 1.0]]]), GOAL: torch.tensor([[0.0, 2.0]])}
    chosen = torch.zeros(1, shield.horizon, 2)
    verdict = shield.guard(obs, chosen, params, LOW, HIGH, [])
    assert verdict.shielded.item() and verdict.actions[0, 0].item() > 0.5  # accelerating along +x, away
    assert abs(verdict.actions[0, 1].item()) < 1e-6


def test_sliding_keeps_a_policy_heading_into_a_zone_outside_it_and_moving_on() -> None:
    """A policy driving straight at a goal behind a zone: its own rollout enters the zone, the sliding
    rollout closes on the edge ever slower and moves along it, towards the goal."""
    shield = Shield(PointMass(), horizon=10, objective=Objective([GoalReward()]), cfg=ShieldConfig(brake_gain=1 / DT))
    goal = torch.tensor([[3.0, 0.3]])
    params = {ZONES: torch.tensor([[[1.5, 0.0, 0.5]]]), GOAL: goal}

    def seek(state: torch.Tensor, p: dict) -> torch.Tensor:
        return (p[GOAL] - state[:, :2] - state[:, 2:]).clamp(-1, 1)

    straight = shield.rollout(ORIGIN, seek, params, LOW, HIGH)
    sliding, bent = shield.slide(ORIGIN, seek, params, LOW, HIGH)
    assert not bent.item()  # 1.0 from the edge at rest: the first action is the policy's own
    _, worst, _ = shield.check(ORIGIN, torch.stack([straight, sliding], 1), params)  # (1, 2)
    assert worst[0, 0] < 0 <= worst[0, 1]
    traj, _, _ = shield.check(ORIGIN, sliding[:, None], params)  # (E, 1, 1, Hs, S)
    assert traj[0, 0, 0, -1, 0] > 1.0  # past the zone's near edge, around it
    zoneless = {GOAL: goal}
    alone, bent = shield.slide(ORIGIN, seek, zoneless, LOW, HIGH)
    assert torch.equal(alone, shield.rollout(ORIGIN, seek, zoneless, LOW, HIGH)) and not bent.any()
