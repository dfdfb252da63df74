"""Explanations (``FleetPlanner.explain``) on a Nav2D model whose dynamics is Nav2D's noiseless physics, so
every predicted trajectory and margin has a known value."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from planners import PlanConfig
from planners.objectives import BOX, ZONES, Params
from planners.policy import PolicyConfig
from planners.service import FleetPlanner, ServiceConfig
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.dynamics import Prediction
from worldmodel.envs import SpaceSpec
from worldmodel.envs.nav2d import DT, GOAL_DIMS, POS_DIMS, VEL_DIMS
from worldmodel.model import WorldModel
from worldmodel.nn import Normalizer, expand_members
from worldmodel.reward import RewardModel

NAV_SPEC = SpaceSpec(6, 2, (-1.0, -1.0), (1.0, 1.0), "Nav2D-v0")
H = 8
SERVED = ServiceConfig(plan=PlanConfig(horizon=H, samples=32, iterations=3), shield_horizon=5)


class NavPhysics(nn.Module):
    """Nav2D's noiseless dynamics (v' = v + a DT, x' = x + v' DT) as E identical members."""

    probabilistic = True

    def __init__(self, members: int = 3) -> None:
        super().__init__()
        self.members, self.obs_dim, self.act_dim = members, 6, 2
        self.delta_norm = Normalizer(6)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> Prediction:
        x, a = expand_members(obs, self.members), expand_members(action, self.members)
        v = (x[..., VEL_DIMS] + a * DT).clamp(-3, 3)
        mean = torch.cat([x[..., POS_DIMS] + v * DT, v, x[..., GOAL_DIMS]], -1)
        return Prediction(mean, torch.zeros_like(mean))


class ToyPolicy(nn.Module):
    """A proportional controller towards the goal, braking its velocity: what a trained ``PolicyNet`` offers."""

    def __init__(self, gain: float = 1.0) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.cfg, self.gain = 6, 2, PolicyConfig(), gain
        self.register_buffer("dummy", torch.zeros(1))

    def act(self, obs: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        return (self.gain * (obs[:, GOAL_DIMS] - obs[:, POS_DIMS]) - 2 * obs[:, VEL_DIMS]).clamp(-1, 1)


def nav_model() -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(NAV_SPEC, ModelConfig(), TrainConfig(), NavPhysics(), RewardModel(6, 2, 16, 1), None,
                      version="1.0.0")


def physics(obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """The trajectory (H+1, S) of actions (H, A) from obs (S,), by hand."""
    states = [np.asarray(obs, np.float64)]
    for a in actions:
        x = states[-1]
        v = np.clip(x[2:4] + a * DT, -3, 3)
        states.append(np.concatenate([x[:2] + v * DT, v, x[4:]]))
    return np.stack(states)


OBS = np.array([0.0, 0.0, 0.0, 0.0, 3.0, 0.0], np.float32)  # at the origin, at rest, the goal 3 to the right
ZONE = {ZONES: np.array([[[1.5, 0.0, 0.5]]], np.float32)}  # straight ahead, 1 to 2 on the x axis


def test_the_chosen_plan_and_its_alternatives_with_their_predicted_trajectories() -> None:
    service = FleetPlanner(nav_model(), SERVED)
    out = service.explain(OBS, "goal", ZONE)
    chosen = out.chosen
    assert chosen.source == "chosen" and chosen.actions.shape == (H, 2) and chosen.trajectory.shape == (H + 1, 6)
    np.testing.assert_allclose(chosen.trajectory, physics(OBS, chosen.actions), atol=1e-5)
    assert chosen.disagreement.shape == (H,) and np.allclose(chosen.disagreement, 0, atol=1e-6)
    assert len(out.alternatives) == 3
    for alt in out.alternatives:  # the last round's next best, each its own sequence, none better than the plan
        assert alt.source == "alternative" and not np.allclose(alt.actions, chosen.actions)
        np.testing.assert_allclose(alt.trajectory, physics(OBS, alt.actions), atol=1e-5)
        assert alt.expected_return <= chosen.expected_return + 1e-4
    # The return is the goal reward minus the zone cost along the trajectory.
    dist = np.linalg.norm(chosen.trajectory[1:, :2] - OBS[GOAL_DIMS], axis=-1)
    assert chosen.margins["no_fly_zone"] is not None and chosen.margins["state_box"] is None
    if chosen.margins["no_fly_zone"] > 0.3:  # clear of the zone and its margin: no zone cost
        assert chosen.expected_return == pytest.approx(-dist.sum(), abs=1e-3)
    assert out.decision == "planned" and out.fallback_action_by == "zero"
    np.testing.assert_allclose(out.action, chosen.actions[0], atol=1e-6)


def test_proposals_are_held_or_taken_as_sequences_with_margins_and_the_shields_verdict() -> None:
    service = FleetPlanner(nav_model(), SERVED)
    fast = OBS.copy()
    fast[2] = 2.0  # heading for the zone at speed 2
    held = np.array([[1.0, 0.0], [-1.0, 1.0]], np.float32)  # full ahead; braking and swerving
    out = service.explain(fast, "goal", ZONE, proposals=held)
    into, aside = out.proposals
    np.testing.assert_allclose(into.actions, np.repeat(held[:1], H, 0))
    for option in (into, aside):
        expected = physics(fast, option.actions)
        np.testing.assert_allclose(option.trajectory, expected, atol=1e-5)
        depth = np.linalg.norm(expected[1:, :2] - [1.5, 0.0], axis=-1) - 0.5  # (H,) distance to the zone's edge
        assert option.margins["no_fly_zone"] == pytest.approx(depth.min(), abs=1e-4)
    # The shield looks 5 steps ahead: full ahead enters the zone on step 5 (margin -0.15), swerving stays
    # 0.17 clear that long (and only grazes it on steps 7 and 8).
    assert into.shield_passes is False and aside.shield_passes is True
    sequence = np.zeros((1, H, 2), np.float32)
    sequence[0, :, 1] = np.linspace(-1, 1, H)
    (taken,) = service.explain(OBS, "goal", ZONE, proposals=sequence).proposals
    np.testing.assert_allclose(taken.actions, sequence[0])
    with pytest.raises(ValueError, match=r"proposals must be \(M, A\) actions or \(M, H, A\) sequences"):
        service.explain(OBS, "goal", ZONE, proposals=np.zeros((1, H + 1, 2), np.float32))


def test_the_fallback_is_the_policys_closed_loop_sequence_and_a_box_has_its_margin() -> None:
    policy = ToyPolicy()
    service = FleetPlanner(nav_model(), SERVED, policy=policy)
    box = {BOX: np.array([[-1.0, -1.0], [2.0, 1.0]], np.float32)}  # one agent's, without the N axis
    out = service.explain(OBS, "goal", box)
    fallback = out.fallback
    state = OBS.astype(np.float64)
    for t in range(H):  # the policy acting in the model, step after step
        action = policy.act(torch.as_tensor(state[None], dtype=torch.float32))[0].numpy()
        np.testing.assert_allclose(fallback.actions[t], action, atol=1e-5)
        state = physics(state, action[None])[1]
    assert out.fallback_action_by == "policy"
    assert fallback.margins["no_fly_zone"] is None and fallback.margins["speed"] is None
    inside = np.minimum(fallback.trajectory[1:, :2] - [-1, -1], [2, 1] - fallback.trajectory[1:, :2]).min()
    assert fallback.margins["state_box"] == pytest.approx(inside, abs=1e-4)


def test_an_explanation_is_plain_json_and_names_bad_inputs() -> None:
    service = FleetPlanner(nav_model(), SERVED, policy=ToyPolicy())
    warm = np.full((H, 2), 0.5, np.float32)
    body = service.explain(OBS, "goal", ZONE, warm_start=warm, proposals=np.zeros((1, 2), np.float32),
                           alternatives=2).to_dict()
    text = json.dumps(body, allow_nan=False)  # infinities (no such constraint) are null
    assert set(json.loads(text)) == {"action", "decision", "fallback_reason", "fallback_action_by",
                                     "shielded_constraint", "margin", "chosen", "alternatives", "fallback",
                                     "proposals"}
    assert len(body["alternatives"]) == 2 and body["chosen"]["margins"]["speed"] is None
    with pytest.raises(ValueError, match="unknown objective 'imagined'"):
        service.explain(OBS, "imagined")
    with pytest.raises(ValueError, match=r"obs must be \(S,\) = \(6,\)"):
        service.explain(OBS[:4], "goal")
