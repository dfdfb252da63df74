"""Reward and termination models, kept separate from dynamics.

Separate models are the original article's point: a fleet can change what it
rewards without retraining how the world moves. Both read (s, a, s') so rewards
that depend on the reached state (distance to goal) are as easy as those that
depend on the action (effort).

Shapes: ``E`` members, ``B`` batch, ``S`` state, ``A`` action.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.nn import EnsembleMLP, Normalizer, fold_cached, member_inputs


class _TransitionHead(nn.Module):
    """An MLP ensemble over normalised (s, a, s') with one output per member."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, layers: int, members: int,
                 activation: str) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.members = obs_dim, act_dim, members
        self.in_norm = Normalizer(2 * obs_dim + act_dim)
        self.net = EnsembleMLP(members, 2 * obs_dim + act_dim, 1, hidden, layers, activation)

    def _features(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> torch.Tensor:
        return self.in_norm(member_inputs(self.members, obs, action, new_obs))

    def _logits(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> torch.Tensor:
        return self.net(self._features(obs, action, new_obs)).squeeze(-1)  # (E, B)

    def flops_per_sample(self) -> int:
        return self.net.flops_per_sample()


class RewardModel(_TransitionHead):
    """Regresses r(s, a, s') with MSE on a standardised target."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 200, layers: int = 3, members: int = 1,
                 activation: str = "relu") -> None:
        super().__init__(obs_dim, act_dim, hidden, layers, members, activation)
        self.out_norm = Normalizer(1)

    @torch.no_grad()
    def fit_normalizers(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor,
                        reward: torch.Tensor) -> None:
        """Fit from training rows: (B, S), (B, A), (B, S), (B,)."""
        self.in_norm.fit(torch.cat([obs, action, new_obs], -1))
        self.out_norm.fit(reward.reshape(-1, 1))

    def forward(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> torch.Tensor:
        """Predicted reward of each member: inputs (B, *) or (E, B, *) -> (E, B)."""
        return self.out_norm.inverse(self._logits(obs, action, new_obs).unsqueeze(-1)).squeeze(-1)

    def folded(self) -> "FoldedReward":
        """The inference form planners evaluate; rebuilt whenever the weights change."""
        return fold_cached(self, lambda: FoldedReward(self))

    def loss(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor,
             reward: torch.Tensor) -> torch.Tensor:
        """MSE of each member on its own batch: inputs (E, B, *) -> (E,)."""
        target = self.out_norm(reward.unsqueeze(-1)).squeeze(-1)
        return (self._logits(obs, action, new_obs) - target).square().mean(-1)


class FoldedReward:
    """A ``RewardModel`` for planning: the same rewards through its folded MLP (``FoldedMLP``), no gradient
    to the weights (inputs still get theirs)."""

    def __init__(self, model: RewardModel) -> None:
        self.members = model.members
        self.mlp = model.net.folded(model.in_norm, model.out_norm.std, model.out_norm.mean)

    def __call__(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> torch.Tensor:
        """Predicted reward of each member: inputs (B, *) or (E, B, *) -> (E, B)."""
        return self.mlp(obs, action, new_obs).squeeze(-1)


class TerminationModel(_TransitionHead):
    """Classifies whether s' is terminal, p(terminated | s, a, s'), trained with binary cross-entropy."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 200, layers: int = 3, members: int = 1,
                 activation: str = "relu") -> None:
        super().__init__(obs_dim, act_dim, hidden, layers, members, activation)

    @torch.no_grad()
    def fit_normalizers(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor,
                        terminated: torch.Tensor) -> None:
        self.in_norm.fit(torch.cat([obs, action, new_obs], -1))

    def forward(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> torch.Tensor:
        """Probability that s' is terminal, per member: (E, B)."""
        return torch.sigmoid(self._logits(obs, action, new_obs))

    def loss(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor,
             terminated: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of each member: inputs (E, B, *) -> (E,)."""
        logits = self._logits(obs, action, new_obs)
        return F.binary_cross_entropy_with_logits(logits, terminated.to(logits.dtype), reduction="none").mean(-1)
