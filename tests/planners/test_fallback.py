"""Why a planner's fallback acted, on the toy system: a budget no round fits, ensemble disagreement over
the threshold, a non-finite prediction (that agent only)."""

from __future__ import annotations

import pytest
import torch

from planners import PlanConfig, make_planner
from planners.base import Fallback
from tests.planners.toys import LinearEnsemble, quadratic_objective

LOW, HIGH = -torch.ones(2), torch.ones(2)


def _agents(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, S) seeded states and (N, S) goals one reachable step away."""
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    return x, x + 0.3


def test_a_budget_no_round_fits_falls_back_with_reason_deadline() -> None:
    x, goal = _agents(8)
    planner = make_planner("cem", LinearEnsemble(), quadratic_objective(), LOW, HIGH,
                           PlanConfig(horizon=4, samples=32, iterations=3))
    planner.plan(x, {"goal": goal})  # warm-up: measures a round
    result = planner.plan(x, {"goal": goal}, budget_ms=1e-3)
    assert result.iterations == 0 and (result.fallback_reason == Fallback.DEADLINE).all() and result.fallback.all()
    assert (planner.plan(x, {"goal": goal}).fallback_reason == Fallback.NONE).all()


def test_disagreement_over_the_threshold_falls_back_with_reason_uncertainty() -> None:
    x, goal = _agents(4)
    cfg = PlanConfig(horizon=3, samples=64, iterations=2, disagreement_threshold=1e-3)
    result = make_planner("cem", LinearEnsemble(spread=2.0), quadratic_objective(), LOW, HIGH, cfg).plan(
        x, {"goal": goal})
    assert (result.fallback_reason == Fallback.UNCERTAINTY).all()
    assert [Fallback(int(c)).reason for c in result.fallback_reason[:1]] == ["uncertainty"]


def test_a_non_finite_prediction_falls_back_with_reason_error_for_that_agent_only() -> None:
    x, goal = _agents(3)
    x[1] = float("nan")  # e.g. a diverging model's state
    result = make_planner("cem", LinearEnsemble(), quadratic_objective(), LOW, HIGH,
                          PlanConfig(horizon=3, samples=16, iterations=1)).plan(x, {"goal": goal})
    assert result.fallback_reason.tolist() == [Fallback.NONE, Fallback.ERROR, Fallback.NONE]
    assert torch.isfinite(result.actions).all()


def test_the_disagreement_penalty_lowers_the_returns_where_members_disagree() -> None:
    x, goal = _agents(4)
    actions = torch.rand(4, 8, 3, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1  # (N, K, H, A)
    returns = []
    for penalty in (0.0, 10.0):
        cfg = PlanConfig(horizon=3, samples=8, propagation="expectation", disagreement_penalty=penalty)
        planner = make_planner("cem", LinearEnsemble(spread=0.5), quadratic_objective(), LOW, HIGH, cfg)
        assert planner.rollout.penalty == penalty
        returns.append(planner.rollout.returns(x, actions, {"goal": goal}))  # (N, K)
    assert (returns[1] < returns[0]).all(), returns
    with pytest.raises(ValueError, match="disagreement_penalty must be >= 0, got -1"):
        PlanConfig(disagreement_penalty=-1.0)
