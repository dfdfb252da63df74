"""Planning in latent space: a toy latent world with a known best path first (the planner is batched and
the breach head steers it around a fence), then the closed loop on PixelNav2D at a tiny budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from planners.config import PlanConfig
from planners.latent_eval import LatentEvalConfig, latent_planner, position_probe, run_latent
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

    def next(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        drift = torch.linspace(-1e-3, 1e-3, TOY.members)[:, None, None]  # (E, 1, 1)
        step = torch.cat([action, torch.zeros(*action.shape[:-1], TOY.state_dim - 2)], -1)
        return z + 0.1 * step + drift

    def reward(self, z: torch.Tensor) -> torch.Tensor:
        return -torch.linalg.vector_norm(z[..., :2] - GOAL, dim=-1)

    def breach_logit(self, z: torch.Tensor) -> torch.Tensor:
        centre, radius = FENCE
        return 20.0 * (radius - torch.linalg.vector_norm(z[..., :2] - centre, dim=-1))


def plan_from(start: torch.Tensor, breach_weight: float, horizon: int = 30):
    model = ToyLatent()
    z = torch.zeros(len(start), TOY.state_dim)
    z[:, :2] = start
    planner = latent_planner(model, PlanConfig(horizon=horizon, samples=64, iterations=6), breach_weight=breach_weight)
    return model, planner.plan(z)


def test_all_agents_plan_in_one_batched_program() -> None:
    starts = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, -1.0], [2.0, 2.0]])
    model, result = plan_from(starts, breach_weight=0.0, horizon=10)
    assert result.actions.shape == (4, 2) and result.trajectory.shape == (4, 11, TOY.state_dim)
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


def test_closed_loop_smoke_on_pixels() -> None:
    torch.manual_seed(0)
    model = LatentWorldModel(TOY)
    cfg = LatentEvalConfig(episodes=3, agents=2, steps=3, plan=PlanConfig(horizon=3, samples=4),
                           env={"image_size": 32})
    result = run_latent(model, cfg)
    assert result.success.shape == result.zone_steps.shape == result.steps.shape == (3,)
    assert (result.steps <= 3).all() and result.ms_per_step > 0
    assert "3 episodes" in result.summary()


def test_position_probe_reads_a_linear_latent() -> None:
    class Linear(LatentWorldModel):
        def encode(self, stacks: torch.Tensor) -> torch.Tensor:
            return stacks[:, 0, 0, :2, 0].float()  # two pixels hold the position

    positions = np.random.default_rng(0).uniform(0, 100, size=(200, 2)).round()
    stacks = np.zeros((200, TOY.frames, 32, 32, 3), np.uint8)
    stacks[:, 0, 0, :2, 0] = positions
    r2, rmse = position_probe(Linear(TOY), stacks, positions)
    assert r2 > 0.999 and rmse < 1e-6


def test_eval_config_checks_its_counts() -> None:
    with pytest.raises(ValueError, match="agents"):
        LatentEvalConfig(agents=0)
