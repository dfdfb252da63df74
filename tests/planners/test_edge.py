"""The edge planner (``planners.edge``): numpy objective equal to torch's, the same rollout returns as the
torch planners' on one exported model, a known answer on an exact Nav2D model, quality against torch's CEM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from planners.cem import CEMConfig, CEMPlanner
from planners.config import PlanConfig
from planners.edge import EdgeCEM, shift_plan
from planners.edge_loop import edge_closed_loop
from planners.edge_models import EdgeModels
from planners.edge_objective import EdgeObjective, _colouring, coloured_noise
from planners.noise import _colouring as torch_colouring
from planners.objectives import GOAL, ZONES, GoalReward, LearnedReward, NoFlyZones, Objective
from planners.rollout import Rollout
from tests.thread_fixtures import one_thread  # noqa: F401  (autouse: one torch thread)
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.dynamics import DeterministicDynamics
from worldmodel.envs import SpaceSpec
from worldmodel.envs.nav2d import DT
from worldmodel.export import export_model
from worldmodel.model import WorldModel, build_reward

S, A, E = 6, 2, 3


def exact_nav2d(members: int = E) -> WorldModel:
    """Nav2D's dynamics without walls and speed limit, exactly, as a deterministic ReLU ensemble: a hidden
    layer splits the input into relu(x) and relu(-x), the next passes them on, the output maps them to
    the change p += v dt + a dt^2, v += a dt (every member the same)."""
    d = S + A
    cfg = ModelConfig(dynamics="mlp", ensemble_size=members, hidden=2 * d, layers=2, reward_hidden=16, reward_layers=2)
    dynamics = DeterministicDynamics(S, A, members, hidden=2 * d, layers=2)
    change = torch.zeros(d, S)  # (S + A, S): delta = [obs, action] @ change
    change[2, 0] = change[3, 1] = DT
    change[6, 0] = change[7, 1] = DT * DT
    change[6, 2] = change[7, 3] = DT
    split = torch.cat([torch.eye(d), -torch.eye(d)], 1)  # (d, 2d)
    first, middle, last = (m for m in dynamics.net.net if hasattr(m, "weight"))
    with torch.no_grad():
        first.weight.copy_(split)
        middle.weight.copy_(torch.eye(2 * d))
        last.weight.copy_(split.T @ change)
        for layer in (first, middle, last):
            layer.bias.zero_()
    torch.manual_seed(0)
    spec = SpaceSpec(S, A, (-1.0, -1.0), (1.0, 1.0), "Nav2D-v0")
    return WorldModel(spec, cfg, TrainConfig(), dynamics, build_reward(spec, cfg), None)


@pytest.fixture(scope="module")
def exact(tmp_path_factory: pytest.TempPathFactory) -> tuple[WorldModel, Path]:
    model = exact_nav2d()
    out = tmp_path_factory.mktemp("edge") / "onnx"
    export_model(model, out)
    return model, out


def _scene(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """N agents at rest with goals 3-4 m away and one zone of radius 0.5 halfway: obs (N, S), zones (N, 1, 3)."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(-2, 2, (n, 2))
    angle = rng.uniform(0, 2 * np.pi, n)
    goal = start + 3.5 * np.stack([np.cos(angle), np.sin(angle)], 1)
    obs = np.concatenate([start, np.zeros((n, 2)), goal], 1).astype(np.float32)
    zones = np.concatenate([(start + goal) / 2, np.full((n, 1), 0.5)], 1)[:, None].astype(np.float32)
    return obs, zones


def _step(obs: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Nav2D without noise, walls or speed limit: what ``exact_nav2d`` predicts."""
    out = obs.copy()
    out[:, 2:4] += np.clip(action, -1, 1) * DT
    out[:, :2] += out[:, 2:4] * DT
    return out


def test_objective_equals_the_torch_one() -> None:
    gen = torch.Generator().manual_seed(0)
    n, r, z = 5, 7, 3
    new_obs = torch.randn(1, n, r, S, generator=gen) * 2
    goal = torch.randn(n, 2, generator=gen)
    zones = torch.cat([torch.randn(n, z, 2, generator=gen), torch.rand(n, z, 1, generator=gen) * 2], -1)
    zones[0, 1, 2] = 0  # a padding slot
    zones[1, 0, :2] = new_obs[0, 1, 0, :2]  # an agent inside a zone
    objective = Objective([GoalReward(), NoFlyZones()])
    want = objective(new_obs, new_obs[..., :A], new_obs, {GOAL: goal, ZONES: zones})[0].numpy()  # (N, R)
    got = EdgeObjective("goal", zones=True).terms(new_obs[0].numpy(), goal[:, None].numpy(), zones[:, None].numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_noise_and_settings_match_the_torch_planner() -> None:
    for h, beta in ((30, 2.0), (7, 2.5), (1, 2.0)):
        np.testing.assert_allclose(_colouring(h, beta), torch_colouring(h, beta, torch.device("cpu")).numpy(),
                                   atol=1e-6)
    noise = coloured_noise((400, 64, 30, 2), 2.0, np.random.default_rng(0))
    assert noise.shape == (400, 64, 30, 2) and abs(noise.std() - 1) < 0.02


def test_rollout_returns_equal_the_torch_rollouts(exact: tuple[WorldModel, Path]) -> None:
    """Deterministic dynamics, learned reward: the same returns as ``planners.rollout`` on the torch modules."""
    model, out = exact_nav2d(), exact[1].with_name("learned")
    torch.manual_seed(1)
    for p in model.reward.parameters():
        torch.nn.init.normal_(p, std=0.3)
    export_model(model, out)
    planner = EdgeCEM(EdgeModels(out), EdgeObjective("learned"), PlanConfig(horizon=8))
    obs, _ = _scene(5, 0)
    candidates = np.random.default_rng(0).uniform(-1, 1, (5, 7, 8, A)).astype(np.float32)  # N*K = 35 rows, E = 3
    got = planner.returns(obs, candidates)
    rollout = Rollout(model.dynamics, Objective([LearnedReward(model.reward)]), "ts1", 1)
    with torch.no_grad():
        want = rollout.returns(torch.from_numpy(obs), torch.from_numpy(candidates), {}).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_drives_to_the_goal_around_a_zone_on_the_exact_model(exact: tuple[WorldModel, Path]) -> None:
    obs, zones = _scene(4, 1)
    planner = EdgeCEM(EdgeModels(exact[1]), EdgeObjective("goal", zones=True))
    warm, closest = None, np.full(4, np.inf)
    for _ in range(80):
        result = planner.plan(obs, obs[:, 4:6], zones, warm)
        assert result.actions.shape == (4, A) and np.all(np.abs(result.actions) <= 1)
        warm = shift_plan(result.plan)
        obs = _step(obs, result.actions)
        closest = np.minimum(closest, np.linalg.norm(obs[:, :2] - zones[:, 0, :2], axis=1))
    assert np.all(np.linalg.norm(obs[:, :2] - obs[:, 4:6], axis=1) < 0.5)
    assert np.all(closest > 0.5)  # never inside the zone on the straight way


def test_plans_as_well_as_the_torch_cem(exact: tuple[WorldModel, Path]) -> None:
    model, out = exact
    obs, zones = _scene(24, 2)
    cfg = PlanConfig(horizon=20, iterations=3)
    edge = EdgeCEM(EdgeModels(out), EdgeObjective("goal", zones=True), cfg)
    torch_cem = CEMPlanner(model.dynamics, Objective([GoalReward(), NoFlyZones()]), -torch.ones(A), torch.ones(A),
                           cfg, CEMConfig())
    params = {GOAL: torch.from_numpy(obs[:, 4:6]), ZONES: torch.from_numpy(zones)}
    theirs = torch_cem.plan(torch.from_numpy(obs), params).plan.numpy()
    ours = edge.plan(obs, obs[:, 4:6], zones).plan
    # Both plans scored the same way: through the exact (deterministic) model.
    score = lambda plan: edge.returns(obs, plan[:, None], obs[:, 4:6], zones)[:, 0].mean()  # noqa: E731
    assert score(ours) >= score(theirs) - 0.05 * abs(score(theirs))


def test_closed_loop_on_nav2d_counts_episodes(exact: tuple[WorldModel, Path]) -> None:
    planner = EdgeCEM(EdgeModels(exact[1]), EdgeObjective("goal", zones=True), PlanConfig(samples=16))
    result = edge_closed_loop(planner, episodes=4, agents=4, zones=1, seed=3)
    assert result.episodes == 4 and result.success_rate >= 0.75 and result.steps > 0
    assert result.plan_ms_mean > 0


def test_refuses_what_it_does_not_run(exact: tuple[WorldModel, Path]) -> None:
    models = EdgeModels(exact[1])
    with pytest.raises(ValueError, match="ts1"):
        EdgeCEM(models, cfg=PlanConfig(propagation="expectation"))
    with pytest.raises(ValueError, match="obs must be"):
        EdgeCEM(models).plan(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="zones"):
        EdgeCEM(models, EdgeObjective("goal", zones=True)).plan(np.zeros((2, S), np.float32), np.zeros((2, 2)))


def test_planning_imports_no_torch(exact: tuple[WorldModel, Path]) -> None:
    code = ("import sys, numpy as np\n"
            "from planners.edge import EdgeCEM\nfrom planners.edge_models import EdgeModels\n"
            f"r = EdgeCEM(EdgeModels({str(exact[1])!r})).plan(np.zeros((3, {S}), np.float32))\n"
            "assert r.actions.shape == (3, 2)\n"
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'torch or ray imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
