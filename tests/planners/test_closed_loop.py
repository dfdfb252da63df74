"""Closed-loop smoke runs at a tiny budget: learned Nav2D model, batched agents, real envs; the policy's uses
(fallback, policy-only mode) and the shield on a model that is Nav2D's own physics."""

from __future__ import annotations

import dataclasses

import pytest

from planners import PlanConfig
from planners.config import EvalConfig
from planners.evaluate import EvalStep, build_objective, closed_loop
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.collect import collect
from worldmodel.model import WorldModel
from worldmodel.training import train_world_model

from .test_explain import ToyPolicy
from .test_explain import nav_model as toy_nav_model

SMALL_PLAN = PlanConfig(horizon=20, samples=32, iterations=3)


@pytest.fixture(scope="module")
def nav_model() -> WorldModel:
    data = collect("Nav2D-v0", episodes=100, seed=1)
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    return train_world_model(data, spec, ModelConfig(ensemble_size=3, hidden=64, layers=2, reward_hidden=64,
                                                     reward_layers=2), TrainConfig(epochs=60, patience=8))


def test_planning_on_the_learned_model_reaches_goals(nav_model: WorldModel) -> None:
    result = closed_loop(nav_model, EvalConfig("cem", agents=8, episodes=8, plan=SMALL_PLAN))
    assert result.episodes >= 8 and result.success_rate >= 0.75, result
    assert result.fallbacks == 0 and result.violations == 0  # zones are off
    assert result.plans_per_s > 0 and result.plan_ms_p99 >= result.plan_ms_mean * 0.5


def test_zone_costs_keep_agents_out(nav_model: WorldModel) -> None:
    # Detours cost this small model about a fifth of its successes (about 80% over 64 episodes, with
    # torch's sampling or the native kernel's); 32 episodes keep the check clear of chance.
    result = closed_loop(nav_model, EvalConfig("cem", agents=16, episodes=32, no_fly_zones=2, plan=SMALL_PLAN))
    assert result.episodes >= 32 and result.success_rate >= 0.65, result
    assert result.episodes_with_violation <= 2, result


def test_the_first_episodes_to_start_are_counted_not_the_first_to_end(nav_model: WorldModel) -> None:
    # A planner too weak to reach most goals: failures run to the time limit and end last, so counting
    # the first episodes to end would report the few quick successes of the other agents instead.
    first_end: dict[int, int] = {}
    step = 0

    def on_step(info: EvalStep) -> None:
        nonlocal step
        step += 1
        for i in info.ended.nonzero()[0]:
            first_end.setdefault(int(i), step)

    weak = PlanConfig(horizon=2, samples=2, iterations=1)
    result = closed_loop(nav_model, EvalConfig("shooting", agents=6, episodes=3, plan=weak), on_step=on_step)
    assert result.episodes == 3
    # Exactly envs 0-2's first episodes were counted: their steps, whatever the other envs did.
    assert result.steps == sum(first_end[i] for i in range(3)), (result, first_end)


def test_objective_choices_are_checked(nav_model: WorldModel) -> None:
    for name in ("imagined", "analytic"):  # 'goal' is the one name of Nav2D's goal reward
        with pytest.raises(ValueError, match="objective must be one of learned, goal"):
            build_objective(nav_model, name)
    assert len(build_objective(nav_model, "goal", zones=True).terms) == 4  # goal, zones, box, speed


def test_eval_config_checks_its_values_at_construction() -> None:
    for bad, match in (({"agents": 0}, "agents and episodes must be >= 1"),
                       ({"episodes": 0}, "agents and episodes must be >= 1"),
                       ({"planner": "ilqr"}, "planner must be one of"),
                       ({"objective": "analytic"}, "objective must be one of"),
                       ({"no_fly_zones": -1}, "no_fly_zones must be >= 0")):
        with pytest.raises(ValueError, match=match):
            EvalConfig(**bad)


def test_each_step_reaches_on_step_as_a_typed_record(nav_model: WorldModel) -> None:
    steps: list[EvalStep] = []
    closed_loop(nav_model, EvalConfig("shooting", agents=2, episodes=2, plan=PlanConfig(horizon=2, samples=2)),
                on_step=steps.append)
    first = steps[0]
    assert first.obs.shape == (2, 6) and first.result.actions.shape == (2, 2)
    assert first.ended.shape == first.reset.shape == (2,) and not first.reset.any()
    # An env resets on the step after its episode ended (gymnasium's next-step autoreset).
    for before, after in zip(steps, steps[1:]):
        assert (after.reset == before.ended).all()


def test_with_a_budget_no_round_fits_the_policy_fallback_reaches_goals_and_zero_does_not() -> None:
    # Nav2D's physics as the model and a proportional controller as the policy: every call falls back.
    cfg = EvalConfig("cem", agents=8, episodes=8, objective="goal", plan=PlanConfig(horizon=5, samples=8,
                                                                                   budget_ms=1e-6))
    policy = ToyPolicy()
    with_policy = closed_loop(toy_nav_model(), cfg, policy=policy.act)
    assert with_policy.fallbacks == with_policy.steps and with_policy.success_rate == 1.0, with_policy
    without = closed_loop(toy_nav_model(), dataclasses.replace(cfg, episodes=2))
    assert without.fallbacks == without.steps and without.success_rate == 0.0, without


def test_policy_only_mode_with_the_shield_slides_around_the_zones_it_would_cross() -> None:
    # The controller heads straight for the goal, through the zone Nav2D puts on the way; shielded, it
    # closes on the zone ever slower and goes around it to the goal.
    cfg = EvalConfig("cem", agents=8, episodes=8, objective="goal", no_fly_zones=2, mode="policy",
                     plan=PlanConfig(horizon=5, samples=8))
    policy = ToyPolicy().act
    shielded = closed_loop(toy_nav_model(), cfg, policy=policy)
    unshielded = closed_loop(toy_nav_model(), dataclasses.replace(cfg, shield=False), policy=policy)
    assert unshielded.violations > 0 and unshielded.shield_interventions == 0, unshielded
    assert shielded.shield_interventions > 0 and shielded.violations == 0, shielded
    assert shielded.success_rate == 1.0, shielded
    with pytest.raises(ValueError, match="mode 'policy' needs a policy"):
        closed_loop(toy_nav_model(), cfg)
