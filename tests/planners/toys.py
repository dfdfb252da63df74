"""A toy system with a known optimal plan, for planner tests.

Linear dynamics x' = x + B u with reward -||x' - goal||^2 summed over the horizon.
When the goal is reachable in one step (|B^-1 (goal - x)| <= 1), the optimum is
u* = B^-1 (goal - x) first and zero afterwards, with return 0.
"""

from __future__ import annotations

import torch
from torch import nn

from planners.objectives import GOAL, Objective
from worldmodel.dynamics import Prediction
from worldmodel.nn import Normalizer, expand_members

B_MAT = torch.tensor([[1.0, 0.0], [0.0, 0.8]])


class LinearEnsemble(nn.Module):
    """E exactly linear members; member e uses B * (1 + e * spread), so spread sets their disagreement."""

    def __init__(self, members: int = 3, spread: float = 0.0, var: float = 1e-6) -> None:
        super().__init__()
        self.members, self.probabilistic, self.var = members, True, var
        self.obs_dim, self.act_dim = 2, 2
        scale = 1 + spread * torch.arange(members, dtype=torch.float32)
        self.register_buffer("b", B_MAT[None] * scale[:, None, None])  # (E, S, A)
        self.delta_norm = Normalizer(2)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> Prediction:
        x, u = expand_members(obs, self.members), expand_members(action, self.members)
        mean = x + torch.einsum("esa,eba->ebs", self.b, u)
        return Prediction(mean, torch.full_like(mean, self.var))


class GoalSquared:
    def __call__(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor, params) -> torch.Tensor:
        return -(new_obs - params[GOAL][:, None, :]).square().sum(-1)


def quadratic_objective() -> Objective:
    return Objective([GoalSquared()])


def optimal_first_action(x: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """(N, S), (N, S) -> (N, A): B^-1 (goal - x), clipped to the unit box."""
    return torch.linalg.solve(B_MAT, (goal - x).T).T.clamp(-1, 1)
