"""Planning with a reward model named per agent in place of the world model's own, on Nav2D's noiseless
physics (``test_explain``'s toys): a reward for +x moves the agent right, one for -x left, in one call."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from planners.objectives import GoalReward, LearnedReward, Objective
from planners.service import REWARD_PLANNERS, FleetPlanner
from worldmodel.config import TrainConfig
from worldmodel.reward_artifact import RewardArtifact, RewardConfig, RewardMismatch

from .test_explain import NAV_SPEC, SERVED, nav_model

AT_REST = np.zeros((2, 6), np.float32)  # both at the origin, at rest; their goals (dims 4-5) at the origin too


class XReward(nn.Module):
    """A known reward: ``sign`` times the reached x position (one member)."""

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.sign = sign

    def forward(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> torch.Tensor:
        return self.sign * new_obs[None, :, 0]  # (1, B)


def x_reward(sign: float, version: str, spec=NAV_SPEC) -> RewardArtifact:
    return RewardArtifact(spec, RewardConfig(), TrainConfig(), XReward(sign), version=version)  # type: ignore[arg-type]


def test_each_agent_plans_with_the_reward_model_it_names() -> None:
    service = FleetPlanner(nav_model(), SERVED)
    right, left = x_reward(1.0, "r1.0.0"), x_reward(-1.0, "r2.0.0")
    out = service.plan(AT_REST, rewards=[right, left])
    assert out.actions[0, 0] > 0.5 and out.actions[1, 0] < -0.5  # full ahead each its own way
    assert out.reward_models == ["r1.0.0", "r2.0.0"]
    swapped = service.plan(AT_REST, rewards=[left, right])
    assert swapped.actions[0, 0] < -0.5 and swapped.actions[1, 0] > 0.5


def test_without_a_reward_model_the_world_models_own_reward_plans() -> None:
    service = FleetPlanner(nav_model(), SERVED)
    out = service.plan(AT_REST[:1])
    assert out.reward_models == [None]
    mixed = service.plan(AT_REST, rewards=[None, x_reward(1.0, "r1.0.0")])
    assert mixed.reward_models == [None, "r1.0.0"] and mixed.actions[1, 0] > 0.5


def test_a_reward_model_does_not_touch_the_goal_objective() -> None:
    service = FleetPlanner(nav_model(), SERVED)
    goal_left = np.array([[0.0, 0.0, 0.0, 0.0, -3.0, 0.0]], np.float32)
    out = service.plan(goal_left, objectives=["goal"], rewards=[x_reward(1.0, "r1.0.0")])
    assert out.reward_models == [None] and out.actions[0, 0] < -0.5  # to its goal, not to +x
    with pytest.raises(ValueError, match="no learned reward term"):
        Objective([GoalReward()]).with_reward(XReward(1.0))  # type: ignore[arg-type]
    swapped = Objective([LearnedReward(XReward(1.0)), GoalReward()]).with_reward(XReward(-1.0))  # type: ignore
    assert isinstance(swapped.terms[0], LearnedReward) and swapped.terms[0].model.sign == -1.0


def test_a_reward_model_of_other_spaces_is_refused() -> None:
    service = FleetPlanner(nav_model(), SERVED)
    wider = x_reward(1.0, "r3.0.0", dataclasses.replace(NAV_SPEC, obs_dim=8))
    with pytest.raises(RewardMismatch, match=r"reward model r3.0.0 fits Nav2D-v0 with \(S, A\) = \(8, 2\); "
                                              r"model 1.0.0 has Nav2D-v0 with \(6, 2\)"):
        service.plan(AT_REST[:1], rewards=[wider])
    with pytest.raises(ValueError, match=r"one entry per agent \(2\), got 1"):
        service.plan(AT_REST, rewards=[None])


def test_a_few_reward_planners_are_kept() -> None:
    service = FleetPlanner(nav_model(), SERVED)
    for major in range(1, REWARD_PLANNERS + 3):
        service.plan(AT_REST[:1], rewards=[x_reward(1.0, f"r{major}.0.0")])
    assert list(service._reward_planners) == [f"r{m}.0.0" for m in range(3, REWARD_PLANNERS + 3)]


def test_an_explanation_scores_with_the_reward_model_that_planned() -> None:
    service = FleetPlanner(nav_model(), SERVED)
    right, left = service.explain(AT_REST[0], reward=x_reward(1.0, "r1.0.0")), \
        service.explain(AT_REST[0], reward=x_reward(-1.0, "r2.0.0"))
    assert right.chosen.actions[0, 0] > 0.5 and left.chosen.actions[0, 0] < -0.5
