"""Rollouts through the native kernel score candidates as torch's path does, and leave their inputs alone."""

from __future__ import annotations

import pytest
import torch

from planners.objectives import GOAL, GoalReward, LearnedReward, Objective
from planners import rollout as rollout_module
from planners.rollout import Rollout
from worldmodel import native
from worldmodel.dynamics import FoldedDynamics, ProbabilisticEnsemble
from worldmodel.reward import RewardModel

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"native kernel {native.status()}")


def _models() -> tuple[ProbabilisticEnsemble, RewardModel]:
    torch.manual_seed(0)
    dynamics, reward = ProbabilisticEnsemble(6, 2, members=3, hidden=32, layers=2), RewardModel(6, 2, 32, 2)
    with torch.no_grad():
        dynamics.in_norm.std.uniform_(0.5, 2.0)
        dynamics.delta_norm.std.uniform_(0.1, 1.0)
    return dynamics, reward


@pytest.mark.parametrize("propagation, particles", [("ts1", 1), ("ts1", 3), ("tsinf", 3), ("expectation", 1)])
@pytest.mark.parametrize("n, k", [(7, 11), (16, 3)])  # rows padded to the members' multiple of 16, or not
def test_native_rollouts_score_as_torchs_path_given_the_same_noise(monkeypatch: pytest.MonkeyPatch, n: int, k: int,
                                                                   propagation: str, particles: int) -> None:
    dynamics, reward = _models()
    # Both paths take the same drawn noise rather than the kernel drawing its own.
    monkeypatch.setattr(FoldedDynamics, "noise", lambda self, shape, generator, like: torch.randn(
        shape, generator=generator))
    rollout = Rollout(dynamics, Objective([LearnedReward(reward), GoalReward()]), propagation, particles)
    h = 9
    obs, actions = torch.randn(n, 6), torch.rand(n, k, h, 2) * 2 - 1
    params = {GOAL: torch.randn(n, 2)}
    with torch.no_grad():
        fused = rollout.returns(obs, actions, params, torch.Generator().manual_seed(1))
        for model in (dynamics.folded().mlp, reward.folded().mlp):
            monkeypatch.setattr(model, "kernel", None)
        plain = rollout.returns(obs, actions, params, torch.Generator().manual_seed(1))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("propagation, particles", [("ts1", 1), ("tsinf", 3)])
def test_rollouts_leave_their_inputs_untouched_and_are_seeded(propagation: str, particles: int) -> None:
    dynamics, reward = _models()
    rollout = Rollout(dynamics, Objective([LearnedReward(reward)]), propagation, particles)
    # One candidate each for 48 agents: no padding rows, so the first state is a view of the caller's obs.
    obs, actions = torch.randn(48, 6), torch.rand(48, 1, 5, 2)
    before = obs.clone(), actions.clone()
    with torch.no_grad():
        first = rollout.returns(obs, actions, {}, torch.Generator().manual_seed(2))
        second = rollout.returns(obs, actions, {}, torch.Generator().manual_seed(2))
    assert torch.equal(obs, before[0]) and torch.equal(actions, before[1])
    assert torch.equal(first, second) and first.isfinite().all()


@pytest.mark.parametrize("propagation, particles, penalty", [("ts1", 1, 0.0), ("tsinf", 3, 0.0), ("ts1", 3, 0.5)])
def test_scoring_in_chunks_of_steps_changes_no_return(monkeypatch: pytest.MonkeyPatch, propagation: str,
                                                     particles: int, penalty: float) -> None:
    dynamics, reward = _models()
    rollout = Rollout(dynamics, Objective([LearnedReward(reward), GoalReward()]), propagation, particles, penalty)
    obs, actions, params = torch.randn(5, 6), torch.rand(5, 7, 10, 2) * 2 - 1, {GOAL: torch.randn(5, 2)}
    with torch.no_grad():
        whole = rollout.returns(obs, actions, params, torch.Generator().manual_seed(3))  # one chunk of 10 steps
        rows = 5 * 7 * particles + (-5 * 7 * particles) % 48
        monkeypatch.setattr(rollout_module, "_CHUNK_ROWS", 3 * rows)  # chunks of 3, 3, 3 and 1 steps
        chunked = rollout.returns(obs, actions, params, torch.Generator().manual_seed(3))
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("propagation, particles, penalty", [("ts1", 1, 0.0), ("tsinf", 3, 0.0), ("ts1", 3, 0.5)])
def test_gradients_flow_through_sampled_rollouts(monkeypatch: pytest.MonkeyPatch, propagation: str, particles: int,
                                                 penalty: float) -> None:
    # Gradient MPC differentiates the return with respect to the actions: the rollout must build its
    # steps out of place then, and score them as the buffered path does.
    dynamics, reward = _models()
    monkeypatch.setattr(FoldedDynamics, "noise", lambda self, shape, generator, like: torch.randn(
        shape, generator=generator))
    monkeypatch.setattr(rollout_module, "_CHUNK_ROWS", 1)  # the buffered path in chunks of one step
    rollout = Rollout(dynamics, Objective([LearnedReward(reward), GoalReward()]), propagation, particles, penalty)
    obs, params = torch.randn(4, 6), {GOAL: torch.randn(4, 2)}
    actions = (torch.rand(4, 5, 6, 2) * 2 - 1).requires_grad_()
    returns = rollout.returns(obs, actions, params, torch.Generator().manual_seed(4))
    returns.sum().backward()
    assert actions.grad is not None and actions.grad.abs().sum() > 0
    with torch.no_grad():
        buffered = rollout.returns(obs, actions, params, torch.Generator().manual_seed(4))
    torch.testing.assert_close(returns.detach(), buffered, rtol=1e-5, atol=1e-4)
