"""Planning in latent space: a toy latent world with a known best path first (the planner is batched and
the breach head steers it around a fence), then the closed loop on PixelNav2D at a tiny budget."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from planners.config import PlanConfig
from planners.latent_eval import (LatentEvalConfig, auroc, breach_ahead, episode_latents, head_scores, latent_planner,
                                  linear_probe, planning_inputs, run_latent)
from worldmodel.latent import LatentConfig, LatentWorldModel

TOY = LatentConfig(image_shape=(32, 32, 3), latent=8, simnorm_group=4, members=3, hidden=16, depth=4)
GOAL = torch.tensor([2.0, 0.0])
FENCE = (torch.tensor([1.0, 0.0]), 0.4)  # a disc on the straight path to the goal


class ToyLatent(LatentWorldModel):
    """A latent whose first two entries are a position that each action moves by a tenth of itself;
    members differ by a small drift; reward and breach are known functions of the position."""

    def __init__(self) -> None:
        super().__init__(TOY)
        self.calls = 0

    def next_moving(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        drift = torch.linspace(-1e-3, 1e-3, TOY.members)[:, None, None]  # (E, 1, 1)
        step = torch.cat([action, torch.zeros(*action.shape[:-1], z.shape[-1] - 2)], -1)
        return z + 0.1 * step + drift

    def reward(self, z: torch.Tensor) -> torch.Tensor:
        return -torch.linalg.vector_norm(z[..., :2] - GOAL, dim=-1)

    def breach_logit(self, z: torch.Tensor, zone_map: torch.Tensor | None = None) -> torch.Tensor:
        centre, radius = FENCE
        return 20.0 * (radius - torch.linalg.vector_norm(z[..., :2] - centre, dim=-1))


def plan_from(start: torch.Tensor, breach_weight: float, horizon: int = 30):
    model = ToyLatent()
    z = torch.zeros(len(start), TOY.state_dim)
    z[:, :2] = start
    planner = latent_planner(model, PlanConfig(horizon=horizon, samples=64, iterations=6), breach_weight=breach_weight)
    return model, planner.plan(*planning_inputs(model, z))


def test_all_agents_plan_in_one_batched_program() -> None:
    starts = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, -1.0], [2.0, 2.0]])
    model, result = plan_from(starts, breach_weight=0.0, horizon=10)
    assert result.actions.shape == (4, 2) and result.trajectory.shape == (4, 11, TOY.moving)
    # One model call per horizon step per round, and one per step of the audit: never one per agent.
    assert model.calls == 10 * 6 + 10
    # Each agent heads for the goal from where it is.
    to_goal = GOAL - starts
    cosine = torch.nn.functional.cosine_similarity(result.actions, to_goal, dim=-1)
    assert (cosine > 0.7).all(), cosine


@pytest.mark.parametrize("weight, crosses", [(0.0, True), (100.0, False)])
def test_the_breach_head_steers_plans_around_the_fence(weight: float, crosses: bool) -> None:
    _, result = plan_from(torch.tensor([[0.0, 0.0]]), breach_weight=weight)
    path = result.trajectory[0, :, :2]  # (H+1, 2)
    closest = torch.linalg.vector_norm(path - FENCE[0], dim=-1).min()
    assert bool(closest < FENCE[1]) == crosses, closest
    assert torch.linalg.vector_norm(path[-1] - GOAL) < 1.0  # and still gets near the goal


@pytest.mark.parametrize("recurrent", [False, True])
def test_closed_loop_smoke_on_pixels(recurrent: bool) -> None:
    torch.manual_seed(0)
    model = LatentWorldModel(dataclasses.replace(TOY, recurrent=recurrent, frames=2 if recurrent else TOY.frames))
    calls = {"encode": 0, "filter": 0}
    for name in calls:  # count the calls: one per step for all running agents, filter instead of encode if recurrent
        method = getattr(model, name)
        setattr(model, name, lambda *a, _m=method, _n=name: calls.__setitem__(_n, calls[_n] + 1) or _m(*a))
    cfg = LatentEvalConfig(episodes=3, agents=2, steps=3, plan=PlanConfig(horizon=3, samples=4),
                           env={"image_size": 32})
    result = run_latent(model, cfg)
    assert result.success.shape == result.zone_steps.shape == result.steps.shape == (3,)
    assert (result.steps <= 3).all() and result.ms_per_step > 0
    assert "3 episodes" in result.summary()
    steps = 3 + 3  # two groups of agents (2, then 1), 3 steps each
    # filter encodes inside, so encode counts its calls too when recurrent
    assert calls == ({"encode": 2 + steps, "filter": steps} if recurrent else {"encode": 2 + steps, "filter": 0})


def test_the_probe_reads_a_linear_latent_and_episode_latents_follow_the_model() -> None:
    positions = np.random.default_rng(0).uniform(0, 100, size=(200, 2))
    latents = np.concatenate([positions * 3 + 1, np.random.default_rng(1).normal(size=(200, 3))], 1)
    r2, rmse = linear_probe(latents, positions)
    assert r2 > 0.999 and rmse < 1e-6
    assert linear_probe(latents[:, 2:], positions)[0] < 0.1  # noise alone reads nothing
    torch.manual_seed(0)
    frames = np.random.default_rng(2).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)  # 2 episodes, 3 steps
    actions = np.zeros((2, 3, 2), np.float32)
    for recurrent in (False, True):
        model = LatentWorldModel(dataclasses.replace(TOY, recurrent=recurrent, frames=2)).eval()
        z = episode_latents(model, frames, actions)
        assert z.shape == (2, 4, model.cfg.state_dim)
        with torch.no_grad():
            first = model.encode(torch.from_numpy(np.repeat(frames[:, :1], 2, 1)))
            second = model.encode(torch.from_numpy(frames[:, :2]))
            if recurrent:
                second = model.filter(first, torch.zeros(2, 2), torch.from_numpy(frames[:, :2]))
        assert np.allclose(z[:, 0], first.numpy(), atol=1e-5) and np.allclose(z[:, 1], second.numpy(), atol=1e-5)


def test_auroc_ranks_flagged_rows_above_the_others() -> None:
    flags = np.array([1.0, 1.0, 0.0, 0.0, np.nan])
    assert auroc(np.array([3.0, 2.0, 1.0, 0.0, -9.0]), flags) == 1.0  # the unknown row is left out
    assert auroc(np.array([0.0, 1.0, 2.0, 3.0, 9.0]), flags) == 0.0
    assert auroc(np.ones(5), flags) == 0.5  # ties count half
    assert np.isnan(auroc(np.ones(2), np.zeros(2)))


@torch.no_grad()
def test_the_heads_scores_read_a_model_that_knows_its_world() -> None:
    """Two episodes of the toy latent driven through the fence and on, logged with its exact rewards and breach
    flags: the reward head is exact, and the breach head ranks perfectly now and, through the toy's exact
    dynamics (its members' drifts cancel in their mean), steps ahead."""
    model, steps = ToyLatent(), 40
    actions = np.zeros((2, steps, 2), np.float32)
    actions[0, :, 0], actions[1, :, 0] = 0.5, 0.25  # along the x axis, through the fence at x = 1
    positions = np.concatenate([np.zeros((2, 1, 2)), 0.1 * np.cumsum(actions, 1)], 1)  # (Ep, T+1, 2)
    latents = np.zeros((2, steps + 1, TOY.state_dim), np.float32)
    latents[..., :2] = positions
    arrived = torch.from_numpy(latents[:, 1:])
    rewards = model.reward(arrived).numpy()
    breach = (model.breach_logit(arrived) > 0).float().numpy()
    assert 0 < breach.sum() < breach.size
    lengths = np.array([steps, steps - 5])  # the second's last steps are padding, and lie: read, they would count
    breach[1, -5:], rewards[1, -5:] = 1 - breach[1, -5:], 1e3
    rmse, auc = head_scores(model, latents, rewards, breach, lengths)
    assert rmse < 1e-6 and auc == 1.0
    assert breach_ahead(model, latents, actions, breach, lengths, ahead=(1, 5)) == {1: 1.0, 5: 1.0}


def test_eval_config_checks_its_counts() -> None:
    with pytest.raises(ValueError, match="agents"):
        LatentEvalConfig(agents=0)
