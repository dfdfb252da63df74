"""The policy prior (TD-MPC2) and the projection after each optimiser update, on the toy linear system.

The toy's optimal policy is known (``optimal_first_action``), so a prior with it must let a planner with
a tiny K find what the same planner without it misses.
"""

from __future__ import annotations

import pytest
import torch

from planners import PLANNERS, PlanConfig, make_planner
from planners.objectives import ACTION_HIGH, ACTION_LOW, GOAL, Params
from planners.prior import PolicyPrior, make_prior, policy_rollout

from .toys import B_MAT, LinearEnsemble, optimal_first_action, quadratic_objective

LOW, HIGH = -torch.ones(2), torch.ones(2)


def optimal_policy(obs: torch.Tensor, params: Params) -> torch.Tensor:
    """The toy's optimal feedback policy: reach the goal in one step, then stay."""
    return optimal_first_action(obs, params[GOAL])


def far_agents(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, S) states and goals 2 to 3 steps away: a few random samples rarely head straight there."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    direction = torch.nn.functional.normalize(torch.randn(n, 2, generator=g), dim=-1)
    return x, x + direction * (2.0 + torch.rand(n, 1, generator=g))


@pytest.mark.parametrize("name", PLANNERS)
def test_a_good_prior_lifts_a_tiny_planner_to_the_optimum(name: str) -> None:
    x, goal = far_agents()
    propagation = "expectation" if name == "gradient" else "ts1"
    cfg = PlanConfig(horizon=5, samples=4, iterations=1, prior_share=0.25, propagation=propagation)
    returns = {}
    for prior in (None, optimal_policy):
        planner = make_planner(name, LinearEnsemble(), quadratic_objective(), LOW, HIGH, cfg, prior=prior)
        returns[prior is not None] = planner.plan(x, {GOAL: goal}).expected_return
    # The policy's rollout is the optimum: with it every agent's return is at least the optimum's.
    optimum, _ = _rollout_return(x, goal, 5)
    assert (returns[True] >= optimum * 1.01 - 1e-3).all(), (returns[True] - optimum).min()  # sampled: 1% noise
    assert returns[True].mean() > returns[False].mean() + 1.0, (returns[True].mean(), returns[False].mean())


def _rollout_return(x: torch.Tensor, goal: torch.Tensor, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The optimal policy's (N,) return over h steps and its (N, H, A) actions, on the exact toy."""
    actions, states = policy_rollout(LinearEnsemble(), optimal_policy, x, {GOAL: goal}, h)
    return -(states[:, 1:] - goal[:, None]).square().sum(-1).sum(-1), actions


def test_policy_rollout_follows_the_mean_model_closed_loop() -> None:
    x, goal = far_agents(4)
    actions, states = policy_rollout(LinearEnsemble(members=3, spread=0.5), optimal_policy, x, {GOAL: goal}, 3)
    assert actions.shape == (4, 3, 2) and states.shape == (4, 4, 2)
    mean_b = B_MAT * (1 + 0.5 * torch.arange(3.0)).mean()  # the members' mean model
    torch.testing.assert_close(states[:, 0], x)
    for t in range(3):
        torch.testing.assert_close(actions[:, t], optimal_policy(states[:, t], {GOAL: goal}))
        torch.testing.assert_close(states[:, t + 1], states[:, t] + actions[:, t] @ mean_b.T)


def test_a_one_member_rollout_steps_agent_i_through_member_i_mod_e() -> None:
    x, goal = far_agents(5)
    actions, states = policy_rollout(LinearEnsemble(members=3, spread=0.5), optimal_policy, x, {GOAL: goal}, 3,
                                     one_member=True)
    b = B_MAT * (1 + 0.5 * (torch.arange(5.0) % 3))[:, None, None]  # (N, S, A): each agent's member
    for t in range(3):
        torch.testing.assert_close(actions[:, t], optimal_policy(states[:, t], {GOAL: goal}))
        torch.testing.assert_close(states[:, t + 1], states[:, t] + torch.einsum("nsa,na->ns", b, actions[:, t]))


def test_the_prior_fills_the_last_candidates_the_first_of_them_exact() -> None:
    x, goal = far_agents(3)
    cfg = PlanConfig(horizon=4, samples=10, prior_share=0.3, prior_noise=0.1)
    prior = make_prior(optimal_policy, LinearEnsemble(), cfg, LOW, HIGH)
    assert isinstance(prior, PolicyPrior) and prior.count == 3
    candidates, state = torch.zeros(3, 10, 4, 2), {}
    prior.fill(candidates, x, {GOAL: goal}, state, torch.Generator().manual_seed(0))
    seq = _rollout_return(x, goal, 4)[1]
    assert (candidates[:, :7] == 0).all()
    torch.testing.assert_close(candidates[:, 7], seq)
    spread = (candidates[:, 8:] - seq[:, None]).std()
    assert 0.05 < spread < 0.2, spread  # prior_noise of half the range (1)
    assert "prior" in state  # rolled out once per call, reused by later rounds


def test_prior_share_is_checked_and_sized_from_k() -> None:
    assert PlanConfig(samples=32, prior_share=0.25).prior_samples == 8
    assert PlanConfig(samples=32, prior_share=0.01).prior_samples == 1  # a positive share gives at least one
    assert PlanConfig(samples=4, prior_share=0.99).prior_samples == 3  # one candidate stays the planner's
    assert PlanConfig(samples=32).prior_samples == 0
    assert make_prior(optimal_policy, LinearEnsemble(), PlanConfig(), LOW, HIGH) is None  # share 0: no prior
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"prior_share must be in \[0, 1\)"):
            PlanConfig(prior_share=bad)
    with pytest.raises(ValueError, match="prior_noise must be >= 0"):
        PlanConfig(prior_noise=-1.0)


@pytest.mark.parametrize("name", PLANNERS)
def test_every_candidate_of_every_round_stays_inside_each_agents_bounds(name: str) -> None:
    x, goal = far_agents(4)
    low = torch.tensor([[-0.2, -1.0], [0.0, 0.0], [-1.0, -1.0], [-0.5, 0.1]])
    high = torch.tensor([[0.2, 1.0], [0.3, 0.3], [1.0, -0.5], [0.5, 0.2]])
    params = {GOAL: goal, ACTION_LOW: low, ACTION_HIGH: high}
    propagation = "expectation" if name == "gradient" else "ts1"
    cfg = PlanConfig(horizon=4, samples=16, iterations=3, prior_share=0.25, propagation=propagation)
    planner = make_planner(name, LinearEnsemble(), quadratic_objective(), LOW, HIGH, cfg, prior=optimal_policy)
    seen = []
    planner._round = _recording(planner._round, seen)  # type: ignore[method-assign]
    result = planner.plan(x, params)
    assert len(seen) == 3
    for candidates in [*seen, result.plan[:, None]]:  # (N, K, H, A) every round's, and the chosen plan
        assert (candidates >= low[:, None, None] - 1e-6).all() and (candidates <= high[:, None, None] + 1e-6).all()
    assert (result.actions >= low - 1e-6).all() and (result.actions <= high + 1e-6).all()


def _recording(round_, seen: list[torch.Tensor]):
    def wrapped(obs: torch.Tensor, params: Params, state: dict) -> tuple[torch.Tensor, torch.Tensor]:
        candidates, returns = round_(obs, params, state)
        seen.append(candidates.clone())
        return candidates, returns
    return wrapped
