"""Planning through recurrent (GRU) dynamics from each agent's hidden state, and serving it."""

from __future__ import annotations

import numpy as np
import torch

from planners import PlanConfig, make_planner
from planners.evaluate import build_objective
from planners.rollout import HIDDEN, RecurrentRollout
from planners.service import FleetPlanner, ServiceConfig
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.envs import make_env, space_spec
from worldmodel.model import WorldModel, build_dynamics, build_reward

GRU = ModelConfig(dynamics="gru", ensemble_size=1, hidden=16, layers=2, reward_hidden=16, reward_layers=2)


def _model() -> WorldModel:
    torch.manual_seed(0)
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    return WorldModel(spec, GRU, TrainConfig(), build_dynamics(spec, GRU).eval(), build_reward(spec, GRU).eval(),
                      None, version="1.0.0")


def test_rollout_starts_each_agent_from_its_hidden_state() -> None:
    model = _model()
    planner = make_planner("cem", model.dynamics, build_objective(model), torch.tensor(model.spec.act_low),
                           torch.tensor(model.spec.act_high), PlanConfig(horizon=5, samples=8, iterations=2))
    assert isinstance(planner.rollout, RecurrentRollout)
    obs = torch.rand(3, 6)
    hidden = torch.randn(3, 16)
    plan = torch.rand(3, 5, 2) * 2 - 1
    trajectory, disagreement = planner.rollout.audit(obs, plan, {HIDDEN: hidden})
    h, state = hidden, obs  # the same steps by hand, from the given hidden state
    for t in range(5):
        h, pred = model.dynamics.step(h, state, plan[:, t])
        state = pred.mean[0]
        torch.testing.assert_close(trajectory[:, t + 1], state)
    assert torch.all(disagreement == 0)
    fresh, _ = planner.rollout.audit(obs, plan, {})
    assert not torch.allclose(fresh, trajectory)  # the hidden state matters


def test_served_recurrent_model_returns_each_agents_next_hidden_state() -> None:
    model = _model()
    service = FleetPlanner(model, ServiceConfig(plan=PlanConfig(horizon=5, samples=8, iterations=1)))
    assert service.recurrent
    obs = np.random.default_rng(0).uniform(-1, 1, (4, 6)).astype(np.float32)
    hidden = np.random.default_rng(1).normal(size=(4, 16)).astype(np.float32)
    hidden[2] = np.nan  # a fresh agent
    out = service.plan(obs, hidden=hidden)
    assert out.hidden.shape == (4, 16) and np.all(np.isfinite(out.hidden))
    start = torch.as_tensor(hidden)
    start[2] = 0.0
    expected, _ = model.dynamics.step(start, torch.as_tensor(obs), torch.as_tensor(out.actions))
    np.testing.assert_allclose(out.hidden, expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert service.prediction_error(obs, out.actions, obs).shape == (4,)
