"""Why a planner's fallback acted, on the toy system: a budget no round fits, ensemble disagreement over
the threshold, a non-finite prediction (that agent only); what it is called with; each agent's decision
code; the shield over planned, fallback and policy-only actions; per-agent action bounds."""

from __future__ import annotations

import pytest
import torch

from planners import PlanConfig, make_planner
from planners.base import BasePlanner, Decision, Fallback
from planners.constraints import Constraint
from planners.objectives import ACTION_HIGH, ACTION_LOW, GOAL, ZONES
from planners.shield import Shield
from tests.planners.toys import B_MAT, LinearEnsemble, quadratic_objective

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


def test_a_shrinking_cem_samples_the_candidates_that_fit_the_deadline() -> None:
    x, goal = _agents(8)
    cfg = PlanConfig(horizon=4, samples=128, iterations=3)
    shrinking = make_planner("cem", LinearEnsemble(), quadratic_objective(), LOW, HIGH, cfg, shrink=True)
    whole = make_planner("cem", LinearEnsemble(), quadratic_objective(), LOW, HIGH, cfg)
    for planner in (shrinking, whole):
        planner.plan(x, {"goal": goal})  # warm-up: measures a round and the finish
        planner._round_ms[8], planner._finish_ms[8] = 1000.0, 0.0  # as if a whole round took a second
    # A 200 ms budget: a fifth of a round fits, about 25 of the 128 candidates (fewer on a slow machine: >= 8)
    result = shrinking.plan(x, {"goal": goal}, budget_ms=200.0)
    assert result.iterations == 1 and (result.fallback_reason == Fallback.NONE).all()
    k = shrinking._last[0].shape[1]  # the round's candidates (N, K', H, A)
    assert 8 <= k <= 26, k
    assert shrinking._round_ms[8] < 1000.0  # the round was timed, as a whole one (scaled up), into the estimate
    # Without shrink, no round runs: the fallback acts; with it, a budget of fewer than 8 candidates does the same.
    assert (whole.plan(x, {"goal": goal}, budget_ms=200.0).fallback_reason == Fallback.DEADLINE).all()
    shrinking._round_ms[8] = 1000.0
    assert shrinking.plan(x, {"goal": goal}, budget_ms=30.0).iterations == 0


def test_hold_plan_acts_on_the_warm_starts_when_no_round_fits() -> None:
    x, goal = _agents(3)
    warm = torch.tensor([[[0.5, -0.25]] * 4, [[-2.0, 0.75]] * 4, [[0.0, 0.0]] * 4])  # (N, H, A); one out of the box
    planner = make_planner("cem", LinearEnsemble(), quadratic_objective(), LOW, HIGH,
                           PlanConfig(horizon=4, samples=32, iterations=3), hold_plan=True)
    assert planner.fallback_source == "plan"
    planner.plan(x, {"goal": goal})  # warm-up: measures a round
    late = planner.plan(x, {"goal": goal}, warm_start=warm, budget_ms=1e-3)
    assert late.iterations == 0 and (late.fallback_reason == Fallback.DEADLINE).all()
    held = warm.clamp(-1.0, 1.0)  # projected into the action box
    torch.testing.assert_close(late.actions, held[:, 0])
    torch.testing.assert_close(late.plan, held)  # what the record keeps: the next call warm-starts from it
    cold = planner.plan(x, {"goal": goal}, budget_ms=1e-3)  # no previous plans: the zero action
    assert (cold.actions == 0).all()
    partly = warm.clone()
    partly[1] = float("nan")  # no plan kept for that agent: the box centre, as a fresh agent
    mixed = planner.plan(x, {"goal": goal, ACTION_LOW: torch.full((3, 2), -0.4), ACTION_HIGH: torch.full((3, 2), 0.4)},
                         warm_start=partly, budget_ms=1e-3)
    torch.testing.assert_close(mixed.actions, torch.tensor([[0.4, -0.25], [0.0, 0.0], [0.0, 0.0]]))  # own bounds
    assert not planner.plan(x, {"goal": goal}, warm_start=warm).fallback.any()  # in time: planned
    # with a fallback policy, the policy acts whatever hold_plan says
    policy = make_planner("cem", LinearEnsemble(), quadratic_objective(), LOW, HIGH,
                          PlanConfig(horizon=4, samples=32, iterations=3),
                          fallback=lambda obs, params=None: torch.full((len(obs), 2), 0.5), hold_plan=True)
    assert policy.fallback_source == "policy"
    policy.plan(x, {"goal": goal})
    late = policy.plan(x, {"goal": goal}, warm_start=warm, budget_ms=1e-3)
    assert late.iterations == 0 and (late.actions == 0.5).all()


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


def _toward_goal(obs: torch.Tensor, params) -> torch.Tensor:
    """A policy that needs the request's params: straight at the goal, (N, S) -> (N, A)."""
    return (params[GOAL] - obs).clamp(-1, 1)


def test_the_fallback_policy_gets_the_params_and_its_action_is_projected_into_each_agents_bounds() -> None:
    x, goal = _agents(3)
    planner = make_planner("cem", LinearEnsemble(), quadratic_objective(), LOW, HIGH,
                           PlanConfig(horizon=3, samples=16), fallback=_toward_goal)
    assert planner.fallback_source == "policy"
    planner.plan(x, {GOAL: goal})  # warm-up: measures a round
    high = torch.tensor([[1.0, 1.0], [0.1, 1.0], [1.0, 1.0]])  # agent 1 may not push x past 0.1
    bounds = {GOAL: goal, ACTION_LOW: torch.full((3, 2), -1.0), ACTION_HIGH: high}
    result = planner.plan(x, bounds, budget_ms=1e-3)
    assert (result.decision == Decision.FALLBACK).all() and (result.fallback_reason == Fallback.DEADLINE).all()
    torch.testing.assert_close(result.actions, torch.tensor([[0.3, 0.3], [0.1, 0.3], [0.3, 0.3]]))
    assert (result.shield == 0).all() and (result.margin == float("inf")).all()  # no shield, no check


def test_planned_agents_are_decision_planned_and_the_codes_have_api_names() -> None:
    x, goal = _agents(4)
    result = make_planner("cem", LinearEnsemble(), quadratic_objective(), LOW, HIGH,
                          PlanConfig(horizon=3, samples=16)).plan(x, {GOAL: goal})
    assert result.decision.dtype == torch.int8 and (result.decision == Decision.PLANNED).all()
    assert [d.label for d in Decision] == ["planned", "fallback", "shielded", "policy"]


def _shielded_planner(**kwargs) -> BasePlanner:
    """CEM whose objective ignores zones (it plans straight to the goal) behind a 2-step shield."""
    shield = Shield(LinearEnsemble(), horizon=2, vel_dims=None)
    return make_planner("cem", LinearEnsemble(), quadratic_objective(), LOW, HIGH,
                        PlanConfig(horizon=3, samples=64, iterations=3), shield=shield, **kwargs)


def test_the_shield_replaces_a_plan_into_a_zone_and_passes_the_others() -> None:
    x, goal = _agents(2)
    # Agent 0's goal is inside a zone; agent 1's zone slot is padding (radius 0).
    zones = torch.stack([torch.cat([goal[0], torch.tensor([0.2])]), torch.zeros(3)])[:, None]  # (N, Z=1, 3)
    planner = _shielded_planner()
    result = planner.plan(x, {GOAL: goal, ZONES: zones})
    assert result.decision.tolist() == [Decision.SHIELDED, Decision.PLANNED]
    assert result.shield.tolist() == [Constraint.NO_FLY_ZONE, Constraint.NONE]
    assert result.margin[0] >= 0 and result.margin[1] == float("inf")
    assert torch.equal(result.actions[1], result.plan[1, 0])
    assert torch.linalg.vector_norm(x[0] + result.actions[0] @ B_MAT.T - goal[0]) >= 0.2  # stays out
    assert planner._finish_ms[2] > 0  # the shield's time is reserved within the budget


def test_the_fallback_action_is_shielded_too_and_policy_only_mode_is_decision_policy() -> None:
    x, goal = _agents(2)
    zones = torch.cat([goal, torch.full((2, 1), 0.2)], 1)[:, None]  # each agent's goal in a zone
    planner = _shielded_planner(fallback=_toward_goal)
    planner.plan(x, {GOAL: goal, ZONES: zones})  # warm-up: measures a round
    result = planner.plan(x, {GOAL: goal, ZONES: zones}, budget_ms=1e-3)
    assert (result.fallback_reason == Fallback.DEADLINE).all() and (result.decision == Decision.SHIELDED).all()
    free = planner.act(x, {GOAL: goal, ZONES: torch.zeros(2, 1, 3)})
    assert (free.decision == Decision.POLICY).all() and free.iterations == 0
    torch.testing.assert_close(free.actions, _toward_goal(x, {GOAL: goal}))
    blocked = planner.act(x, {GOAL: goal, ZONES: zones})
    assert (blocked.decision == Decision.SHIELDED).all() and (blocked.shield == Constraint.NO_FLY_ZONE).all()


def test_project_keeps_cem_samples_and_plans_inside_per_agent_bounds() -> None:
    x, goal = _agents(2)
    lo, hi = torch.tensor([[-0.1, -0.2], [0.0, -1.0]]), torch.tensor([[0.1, 0.0], [0.5, -0.5]])
    planner = make_planner("cem", LinearEnsemble(), quadratic_objective(), LOW, HIGH,
                           PlanConfig(horizon=3, samples=32, iterations=3))
    result = planner.plan(x, {GOAL: goal, ACTION_LOW: lo, ACTION_HIGH: hi})
    candidates, _ = planner._last  # the last round's (N, K, H, A)
    for seqs in (candidates, result.plan[:, None]):
        assert (seqs >= lo[:, None, None]).all() and (seqs <= hi[:, None, None]).all()
    top, returns = planner.top_candidates(3)
    assert top.shape == (2, 3, 3, 2) and (returns[:, :-1] >= returns[:, 1:]).all()
