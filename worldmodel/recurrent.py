"""Recurrent dynamics for partially observable settings: a GRU carries what one observation misses.

The hidden state ``h`` summarises the history of observations and actions; it is
what fleetwm's agent-state actors keep per agent between requests.

Shapes: ``B`` batch, ``L`` sequence length, ``S`` observation, ``A`` action, ``H`` hidden.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.dynamics import Prediction
from worldmodel.nn import Normalizer


class RecurrentDynamics(nn.Module):
    """GRU dynamics with a Gaussian head over the next-observation delta."""

    members = 1
    probabilistic = True

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden = obs_dim, act_dim, hidden
        self.in_norm = Normalizer(obs_dim + act_dim)
        self.delta_norm = Normalizer(obs_dim)
        self.embed = nn.Sequential(nn.Linear(obs_dim + act_dim, hidden), nn.SiLU())
        self.cell = nn.GRUCell(hidden, hidden)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2 * obs_dim))
        self.max_logvar = nn.Parameter(torch.full((obs_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((obs_dim,), -10.0))
        # Per-dimension scale of the predictive variance, fitted on validation data (calibration.py).
        self.register_buffer("var_scale", torch.ones(obs_dim))

    @torch.no_grad()
    def fit_normalizers(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> None:
        """Fit statistics from rows of any leading shape: (..., S), (..., A), (..., S)."""
        self.in_norm.fit(torch.cat([obs, action], -1))
        self.delta_norm.fit(new_obs - obs)

    def initial_state(self, batch: int) -> torch.Tensor:
        """Hidden state of a fresh episode: (B, H) zeros."""
        return torch.zeros(batch, self.hidden, device=self.in_norm.mean.device)

    def _step(self, h: torch.Tensor, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.cell(self.embed(self.in_norm(torch.cat([obs, action], -1))), h)
        mean_n, logvar = self.head(h).chunk(2, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return h, mean_n, logvar

    def step(self, h: torch.Tensor, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, Prediction]:
        """Advance one step.

        Args:
            h: (B, H) hidden state before the step.
            obs: (B, S) current observation.
            action: (B, A) action taken.

        Returns:
            (h', prediction) with h' (B, H) and prediction mean/var (1, B, S).
        """
        h, mean_n, logvar = self._step(h, obs, action)
        mean = obs + self.delta_norm.inverse(mean_n)
        var = logvar.exp() * self.delta_norm.std.square()
        return h, Prediction(mean.unsqueeze(0), var.unsqueeze(0), self.var_scale)

    def loss(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> torch.Tensor:
        """Teacher-forced Gaussian NLL over sequences, from a zero state at each sequence start.

        Args:
            obs, action, new_obs: (E=1, B, L, *) sequences (the trainer's member axis).

        Returns:
            (1,) mean NLL.
        """
        obs, action, new_obs = obs[0], action[0], new_obs[0]
        h = self.initial_state(obs.shape[0])
        target = self.delta_norm(new_obs - obs)  # (B, L, S)
        nll = []
        for t in range(obs.shape[1]):
            h, mean_n, logvar = self._step(h, obs[:, t], action[:, t])
            nll.append(0.5 * ((mean_n - target[:, t]).square() * (-logvar).exp() + logvar))
        bound_reg = 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())
        return (torch.stack(nll).mean() + bound_reg).unsqueeze(0)
