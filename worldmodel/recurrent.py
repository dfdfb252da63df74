"""Recurrent dynamics for partially observable settings: an ensemble of GRUs carries what one observation misses.

The hidden state summarises the history of observations and actions; it is what fleetwm's
agent-state actors keep per agent between requests. Every member has its own GRU (its own
weights, its own bootstrap of sequence windows), so members disagree where the data is thin, as
the MLP ensembles' members do, and that disagreement gates the planners' fallback. All members
run as one batched program: (E, ...) weight tensors and batched matmuls, no loop over members.

The per-agent hidden state stays one flat vector (B, E*Hd) (member-major within a row) so shards,
records and the API do not depend on E; it is viewed as (E, B, Hd) inside. A one-member model's
flat state is the (B, Hd) state of a single GRU.

Shapes: ``E`` members, ``B`` batch, ``L`` sequence length, ``S`` observation, ``A`` action, ``Hd`` hidden.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from worldmodel.config import ModelConfig
from worldmodel.dynamics import Prediction
from worldmodel.nn import EnsembleLinear, Normalizer, expand_members, soft_bound


class EnsembleGRUCell(nn.Module):
    """E independent GRU cells with ``torch.nn.GRUCell``'s equations and parameter names, stored (E, in, out)
    for batched matmuls: x (E, B, I), h (E, B, Hd) -> h' (E, B, Hd)."""

    def __init__(self, members: int, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.weight_ih = nn.Parameter(torch.empty(members, in_dim, 3 * hidden))
        self.weight_hh = nn.Parameter(torch.empty(members, hidden, 3 * hidden))
        self.bias_ih = nn.Parameter(torch.empty(members, 1, 3 * hidden))
        self.bias_hh = nn.Parameter(torch.empty(members, 1, 3 * hidden))
        bound = 1.0 / math.sqrt(hidden)  # GRUCell's init, drawn per member so members differ off-data
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        i_r, i_z, i_n = torch.baddbmm(self.bias_ih, x, self.weight_ih).chunk(3, -1)  # (E, B, Hd) each
        h_r, h_z, h_n = torch.baddbmm(self.bias_hh, h, self.weight_hh).chunk(3, -1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return n + z * (h - n)  # (1 - z) * n + z * h


class RecurrentDynamics(nn.Module):
    """An ensemble of E GRU dynamics models, each with a Gaussian head over the next-observation delta."""

    probabilistic = True

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 128,
                 members: int = ModelConfig.ensemble_size) -> None:
        super().__init__()
        if not (isinstance(members, int) and members >= 1):
            raise ValueError(f"members must be an integer >= 1, got {members!r}")
        self.obs_dim, self.act_dim, self.hidden, self.members = obs_dim, act_dim, hidden, members
        self.in_norm = Normalizer(obs_dim + act_dim)
        self.delta_norm = Normalizer(obs_dim)
        self.embed = nn.Sequential(EnsembleLinear(members, obs_dim + act_dim, hidden), nn.SiLU())
        self.cell = EnsembleGRUCell(members, hidden, hidden)
        self.head = nn.Sequential(EnsembleLinear(members, hidden, hidden), nn.SiLU(),
                                  EnsembleLinear(members, hidden, 2 * obs_dim))
        self.max_logvar = nn.Parameter(torch.full((obs_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((obs_dim,), -10.0))
        # Per-dimension scale of the predictive variance, fitted on validation data (calibration.py).
        self.register_buffer("var_scale", torch.ones(obs_dim))
        self._register_load_state_dict_pre_hook(_from_single_gru)

    @torch.no_grad()
    def fit_normalizers(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> None:
        """Fit statistics from rows of any leading shape: (..., S), (..., A), (..., S)."""
        self.in_norm.fit(torch.cat([obs, action], -1))
        self.delta_norm.fit(new_obs - obs)

    @property
    def state_size(self) -> int:
        """Width of one agent's flat hidden state: E*Hd."""
        return self.members * self.hidden

    def initial_state(self, batch: int) -> torch.Tensor:
        """Hidden state of a fresh episode: (B, E*Hd) zeros."""
        return torch.zeros(batch, self.state_size, device=self.in_norm.mean.device)

    def split(self, h: torch.Tensor) -> torch.Tensor:
        """Flat hidden states (B, E*Hd) as each member's: (E, B, Hd), a view."""
        if h.dim() != 2 or h.shape[1] != self.state_size:
            raise ValueError(f"hidden state must be (B, {self.state_size}) = (B, E*Hd) for "
                             f"{self.members} members of {self.hidden}, got {tuple(h.shape)}")
        return h.view(len(h), self.members, self.hidden).transpose(0, 1)

    def join(self, h: torch.Tensor) -> torch.Tensor:
        """Each member's hidden states (E, B, Hd) as flat ones: (B, E*Hd)."""
        return h.transpose(0, 1).reshape(h.shape[1], -1)

    def _step(self, h: torch.Tensor, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(E, B, Hd), (E, B, S), (E, B, A) -> h' (E, B, Hd), normalised delta mean and bounded log-variance
        (E, B, S) each."""
        h = self.cell(self.embed(self.in_norm(torch.cat([obs, action], -1))), h)
        mean_n, logvar = self.head(h).chunk(2, dim=-1)
        return h, mean_n, soft_bound(logvar, self.min_logvar, self.max_logvar)

    def step_members(self, h: torch.Tensor, obs: torch.Tensor,
                     action: torch.Tensor) -> tuple[torch.Tensor, Prediction]:
        """``step`` on each member's hidden state (E, B, Hd) -> (E, B, Hd): no flattening between steps."""
        obs, action = expand_members(obs, self.members), expand_members(action, self.members)
        h, mean_n, logvar = self._step(h, obs, action)
        mean = obs + self.delta_norm.inverse(mean_n)
        var = logvar.exp() * self.delta_norm.std.square()
        return h, Prediction(mean, var, self.var_scale)

    def step(self, h: torch.Tensor, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, Prediction]:
        """Advance every member one step.

        Args:
            h: (B, E*Hd) hidden state before the step.
            obs: (B, S) current observation seen by every member (the served case), or (E, B, S) each
                member its own (rollouts: each member follows its own predictions).
            action: (B, A) or (E, B, A) action taken.

        Returns:
            (h', prediction) with h' (B, E*Hd) and prediction mean/var (E, B, S).
        """
        h, pred = self.step_members(self.split(h), obs, action)
        return self.join(h), pred

    def loss(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> torch.Tensor:
        """Teacher-forced Gaussian NLL of each member on its own sequences, from a zero state at each start.

        Args:
            obs, action, new_obs: (E, B, L, *) sequences, one batch per member (the trainer's member axis).

        Returns:
            (E,) each member's mean NLL (the trainer sums them).
        """
        if obs.dim() != 4 or obs.shape[0] != self.members:
            raise ValueError(f"expected sequences ({self.members}, B, L, S), got {tuple(obs.shape)}")
        h = obs.new_zeros(self.members, obs.shape[1], self.hidden)
        target = self.delta_norm(new_obs - obs)  # (E, B, L, S)
        nll = obs.new_zeros(self.members)
        for t in range(obs.shape[2]):
            h, mean_n, logvar = self._step(h, obs[:, :, t], action[:, :, t])
            nll = nll + 0.5 * ((mean_n - target[:, :, t]).square() * (-logvar).exp() + logvar).mean(dim=(1, 2))
        bound_reg = 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())
        return nll / obs.shape[2] + bound_reg


_PER_MEMBER = ("embed.", "cell.", "head.")
"""Modules whose parameters gained a leading member axis; a single ``nn.GRUCell`` model stored them without."""


def _from_single_gru(state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load hook: weights of a one-member model saved with ``nn.Linear``/``nn.GRUCell`` layers ((O, I)
    weights, (O,) biases) become the one-member (1, I, O) and (1, 1, O) tensors of this model."""
    for key, value in list(state_dict.items()):
        name = key[len(prefix):]
        if not key.startswith(prefix) or not name.startswith(_PER_MEMBER):
            continue
        if value.dim() == 2:
            state_dict[key] = value.t().unsqueeze(0)
        elif value.dim() == 1:
            state_dict[key] = value[None, None]
