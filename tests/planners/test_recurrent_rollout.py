"""Planning through GRU ensembles: each member carries its own hidden state, and their disagreement gates."""

from __future__ import annotations

import numpy as np
import torch

from planners import PlanConfig, make_planner
from planners.base import Fallback
from planners.config import EvalConfig
from planners.evaluate import EvalStep, build_objective, closed_loop
from planners.objectives import ZONES
from planners.rollout import HIDDEN, RecurrentRollout
from planners.service import FleetPlanner, ServiceConfig
from planners.shield import Shield
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.envs import make_env, space_spec
from worldmodel.model import WorldModel, build_dynamics, build_reward

E, HD = 3, 8
GRU = ModelConfig(dynamics="gru", ensemble_size=E, hidden=HD, layers=1, reward_hidden=16, reward_layers=1)


def _model(quiet: bool = False) -> WorldModel:
    """An untrained 3-member GRU ensemble on Nav2D; ``quiet``: variances so small that draws are the means."""
    torch.manual_seed(0)
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    dynamics = build_dynamics(spec, GRU).eval()
    if quiet:
        with torch.no_grad():
            dynamics.max_logvar.fill_(-40.0)
            dynamics.min_logvar.fill_(-50.0)
    return WorldModel(spec, GRU, TrainConfig(), dynamics, build_reward(spec, GRU).eval(), None, version="1.0.0")


def _planner(model: WorldModel, **plan: object):  # noqa: ANN202
    cfg = PlanConfig(**{"horizon": 4, "samples": 8, "iterations": 1, **plan})
    return make_planner("cem", model.dynamics, build_objective(model), torch.tensor(model.spec.act_low),
                        torch.tensor(model.spec.act_high), cfg)


def test_the_audit_steps_every_member_from_its_own_hidden_state_and_reports_their_disagreement() -> None:
    model = _model()
    rollout = _planner(model).rollout
    assert isinstance(rollout, RecurrentRollout) and rollout.members == E
    obs, hidden, plan = torch.rand(2, 6), torch.randn(2, E * HD), torch.rand(2, 4, 2) * 2 - 1
    trajectory, disagreement = rollout.audit(obs, plan, {HIDDEN: hidden})
    dyn, h, state = model.dynamics, model.dynamics.split(hidden), obs  # by hand: members from the mean state
    for t in range(4):
        h, pred = dyn.step_members(h, state, plan[:, t])
        state = pred.mean.mean(0)
        torch.testing.assert_close(trajectory[:, t + 1], state)
        spread = (pred.mean.var(0, unbiased=False) / dyn.delta_norm.std.square()).mean(-1)  # Rollout's units
        torch.testing.assert_close(disagreement[:, t], spread)
    assert bool((disagreement > 0).all())


def test_sampled_rollouts_deal_particles_to_members_each_with_its_own_hidden_state() -> None:
    model = _model(quiet=True)  # draws equal means: each particle's return is its member's own trajectory's
    rollout = _planner(model, particles=E).rollout
    obs, hidden, actions = torch.rand(2, 6), torch.randn(2, E * HD), torch.rand(2, 5, 4, 2) * 2 - 1
    params = {HIDDEN: hidden}
    returns = rollout.returns(obs, actions, params, torch.Generator().manual_seed(0))  # (N, K)
    n, k, h, a = actions.shape
    dyn, total = model.dynamics, torch.zeros(E, n * k)
    state = obs[:, None].expand(n, k, 6).reshape(n * k, 6).expand(E, -1, -1)  # (E, N*K, S): member e's own
    hid = dyn.split(hidden).repeat_interleave(k, 1)  # (E, N*K, Hd)
    objective = rollout.objective.prepared()
    with torch.no_grad():
        for t in range(h):
            act = actions[:, :, t].reshape(n * k, a)
            hid, pred = dyn.step_members(hid, state, act)
            total += objective(state.reshape(E, n, k, 6), act.expand(E, -1, -1).reshape(E, n, k, a),
                               pred.mean.reshape(E, n, k, 6), params).reshape(E, n * k)  # (E, N*K)
            state = pred.mean
    torch.testing.assert_close(returns, total.mean(0).view(n, k), rtol=1e-4, atol=1e-4)


def test_served_gru_ensemble_returns_every_members_hidden_state_and_falls_back_on_disagreement() -> None:
    model = _model()
    plan = PlanConfig(horizon=4, samples=8, iterations=1, disagreement_threshold=1e-9)
    service = FleetPlanner(model, ServiceConfig(plan=plan))
    obs = np.random.default_rng(0).uniform(-1, 1, (4, 6)).astype(np.float32)
    hidden = np.random.default_rng(1).normal(size=(4, E * HD)).astype(np.float32)
    hidden[2] = np.nan  # a fresh agent
    out = service.plan(obs, hidden=hidden)
    assert out.hidden.shape == (4, E * HD) and np.all(np.isfinite(out.hidden))
    start = torch.as_tensor(hidden)
    start[2] = 0.0
    expected, _ = model.dynamics.step(start, torch.as_tensor(obs), torch.as_tensor(out.actions))
    np.testing.assert_allclose(out.hidden, expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert (out.fallback_reason == Fallback.UNCERTAINTY).all()  # untrained members disagree everywhere
    calm = FleetPlanner(model, ServiceConfig(plan=PlanConfig(horizon=4, samples=8, iterations=1)))
    assert (calm.plan(obs, hidden=hidden).fallback_reason == Fallback.NONE).all()


def test_the_shield_checks_every_member_from_each_agents_hidden_state() -> None:
    model = _model()
    shield = Shield(model.dynamics, horizon=3)
    obs, hidden, seqs = torch.rand(2, 6), torch.randn(2, E * HD), torch.rand(2, 2, 3, 2) * 2 - 1
    zones = torch.tensor([[[0.0, 0.0, 0.3]], [[0.5, 0.5, 0.2]]])
    traj, worst, _ = shield.check(obs, seqs, {HIDDEN: hidden, ZONES: zones})
    assert traj.shape == (E, 2, 2, 3, 6) and worst.shape == (2, 2)
    dyn = model.dynamics
    h = dyn.split(hidden).repeat_interleave(2, 1)  # (E, N*M, Hd): each agent's, once per sequence
    state = obs.repeat_interleave(2, 0)
    with torch.no_grad():
        for t in range(3):
            h, pred = dyn.step_members(h, state, seqs.reshape(4, 3, 2)[:, t])
            state = pred.mean  # each member follows its own states
            torch.testing.assert_close(traj[:, :, :, t], state.view(E, 2, 2, 6))


def test_a_served_gru_ensemble_is_shielded_and_explained_from_each_agents_hidden_state() -> None:
    model = _model()
    service = FleetPlanner(model, ServiceConfig(plan=PlanConfig(horizon=4, samples=8, iterations=1)))
    obs = np.random.default_rng(0).uniform(-1, 1, (3, 6)).astype(np.float32)
    zones = np.tile(np.asarray([[obs[0, 0], obs[0, 1], 0.5]], np.float32), (3, 1, 1))  # (N, 1, 3)
    hidden = np.random.default_rng(1).normal(size=(3, E * HD)).astype(np.float32)
    out = service.plan(obs, hidden=hidden, constraints={ZONES: zones})
    assert np.isfinite(out.margin).all() and out.hidden.shape == (3, E * HD)
    explained = service.explain(obs[1], constraints={ZONES: zones[1]})
    assert np.asarray(explained.chosen.trajectory).shape == (5, 6)


def test_the_closed_loop_carries_each_agents_hidden_state_and_starts_new_episodes_fresh() -> None:
    model = _model()
    steps: list[EvalStep] = []
    cfg = EvalConfig(planner="cem", agents=2, episodes=3, objective="goal", shield=False,
                     plan=PlanConfig(horizon=3, samples=4, iterations=1))
    closed_loop(model, cfg, on_step=steps.append)
    assert torch.equal(steps[0].params[HIDDEN], torch.zeros(2, E * HD))
    with torch.no_grad():
        expected = model.dynamics.step(steps[0].params[HIDDEN], steps[0].obs, steps[0].result.actions)[0]
    torch.testing.assert_close(steps[1].params[HIDDEN], expected)
    fresh = [s.params[HIDDEN][torch.as_tensor(s.reset)] for s in steps if s.reset.any()]
    assert fresh and all(bool((h == 0).all()) for h in fresh)
