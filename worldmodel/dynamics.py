"""Dynamics models: MLP ensembles predicting the next state from (state, action).

Both models predict the normalised state delta (the original article's choice:
deltas are small and well-conditioned) and return next states in raw units.
Members are evaluated together by batched matmuls (``EnsembleMLP``); there is no
Python loop over members.

Shapes: ``E`` members, ``B`` batch, ``S`` state, ``A`` action.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from worldmodel.nn import EnsembleMLP, Normalizer, expand_members, fold_cached, member_inputs, soft_bound, variance


@dataclass(frozen=True)
class Prediction:
    """One-step prediction of every member.

    Attributes:
        mean: (E, B, S) predicted next state.
        var: (E, B, S) predicted aleatoric variance of the next state (zeros when deterministic).
        scale: (S,) calibration of the predictive variance fitted on held-out data (ones when none).
    """

    mean: torch.Tensor
    var: torch.Tensor
    scale: torch.Tensor | float = 1.0

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        """Draws of the next state from standard normal ``noise`` shaped like ``mean``: the mean plus
        the calibrated standard deviation times the noise."""
        return self.mean + (self.var * self.scale).clamp_min(1e-12).sqrt() * noise

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and calibrated variance of the ensemble as one Gaussian: ((B, S), (B, S)).

        The variance adds the members' mean aleatoric variance and their
        disagreement (epistemic variance), as in PETS' moment matching, times
        the calibration scale.
        """
        mean = self.mean.mean(0)
        var = (self.var.mean(0) + variance(self.mean, 0)) * self.scale
        return mean, var


class EnsembleDynamics(nn.Module):
    """Shared body of the MLP dynamics models; subclasses choose the output head and loss."""

    probabilistic: bool = False

    def __init__(self, obs_dim: int, act_dim: int, members: int, hidden: int, layers: int,
                 activation: str = "relu") -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.members = obs_dim, act_dim, members
        self.in_norm = Normalizer(obs_dim + act_dim)
        self.delta_norm = Normalizer(obs_dim)
        out_dim = 2 * obs_dim if self.probabilistic else obs_dim
        self.net = EnsembleMLP(members, obs_dim + act_dim, out_dim, hidden, layers, activation)
        # Per-dimension scale of the predictive variance, fitted on validation data (calibration.py).
        self.register_buffer("var_scale", torch.ones(obs_dim))

    @torch.no_grad()
    def fit_normalizers(self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> None:
        """Fit input and delta statistics from training rows: (B, S), (B, A), (B, S)."""
        self.in_norm.fit(torch.cat([obs, action], -1))
        self.delta_norm.fit(next_obs - obs)

    def _raw(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = self.in_norm(member_inputs(self.members, obs, action))
        return self.net(x)  # (E, B, O)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> Prediction:
        """Predict next states.

        Args:
            obs: (B, S) shared by all members, or (E, B, S) one batch per member.
            action: (B, A) or (E, B, A).

        Returns:
            Prediction with mean and var of shape (E, B, S).
        """
        mean_n, logvar = self._head(self._raw(obs, action))
        mean = expand_members(obs, self.members) + self.delta_norm.inverse(mean_n)
        var = logvar.exp() * self.delta_norm.std.square()
        return Prediction(mean, var, self.var_scale)

    def loss(self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """Training loss of each member on its own batch: inputs (E, B, *) -> (E,)."""
        mean_n, logvar = self._head(self._raw(obs, action))
        target = self.delta_norm(next_obs - obs)
        return self._loss(mean_n, logvar, target)

    def val_loss(self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """Early-stopping criterion of each member: MSE of the normalised mean delta, (E, B, *) -> (E,).

        Not the NLL: held-out NLL starts rising as soon as the variances grow overconfident,
        long before the means stop improving, and calibration.py rescales variances afterwards.
        """
        mean_n, _ = self._head(self._raw(obs, action))
        return (mean_n - self.delta_norm(next_obs - obs)).square().mean(dim=(1, 2))

    def _head(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _loss(self, mean_n: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def flops_per_sample(self) -> int:
        """FLOPs of one member predicting one row (matmuls only)."""
        return self.net.flops_per_sample()

    def folded(self) -> "FoldedDynamics":
        """The inference form planners roll out; rebuilt whenever the weights change."""
        return fold_cached(self, lambda: FoldedDynamics(self))


class FoldedDynamics:
    """An ``EnsembleDynamics`` for planning: the same next states, drawn in fewer passes.

    The input and delta normalisers are folded into the MLP's first and last layers and the
    calibrated standard deviation is one ``exp``. No gradient reaches the weights; actions
    still get theirs (gradient MPC). Shapes as ``EnsembleDynamics.forward``.
    """

    def __init__(self, model: EnsembleDynamics) -> None:
        s, std = model.obs_dim, model.delta_norm.std
        self.members, self.obs_dim, self.probabilistic = model.members, s, model.probabilistic
        # Outputs: the raw delta's mean, then (probabilistic) the log-variance, left as it is.
        out_scale, out_shift = std, model.delta_norm.mean
        if self.probabilistic:
            out_scale, out_shift = torch.cat([std, torch.ones_like(std)]), torch.cat([out_shift, torch.zeros_like(std)])
            self.min_logvar, self.max_logvar = model.min_logvar.detach(), model.max_logvar.detach()
            # log of the calibrated std per unit of exp(logvar / 2): std_raw * sqrt(var_scale).
            self.log_scale = 0.5 * torch.log(std.square() * model.var_scale)
        self.mlp = model.net.folded(model.in_norm, out_scale, out_shift)

    def _out(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obs = expand_members(obs, self.members)
        return obs, self.mlp(member_inputs(self.members, obs, action))

    def mean(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Each member's predicted next state: (B, S) or (E, B, S) -> (E, B, S)."""
        obs, out = self._out(obs, action)
        return obs + out[..., :self.obs_dim]

    def sample(self, obs: torch.Tensor, action: torch.Tensor,
               noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's predicted next state and its draw from standard normal ``noise`` (E, B, S), as
        ``Prediction.sample`` draws it: ((E, B, S), (E, B, S)). A deterministic model's draw is its mean."""
        obs, out = self._out(obs, action)
        mean = obs + out[..., :self.obs_dim]
        if not self.probabilistic:
            return mean, mean
        logvar = soft_bound(out[..., self.obs_dim:], self.min_logvar, self.max_logvar)
        return mean, torch.addcmul(mean, torch.exp(logvar * 0.5 + self.log_scale), noise)


class DeterministicDynamics(EnsembleDynamics):
    """The original article's model: an MLP regressing the state delta with MSE.

    ``members > 1`` trains several independent deterministic nets whose spread
    still measures disagreement; the article used one.
    """

    probabilistic = False

    def __init__(self, obs_dim: int, act_dim: int, members: int = 1, hidden: int = 64, layers: int = 2,
                 activation: str = "relu") -> None:
        super().__init__(obs_dim, act_dim, members, hidden, layers, activation)
        # A deterministic model's log-variance: -inf, so the predicted variance is exactly zero.
        self.register_buffer("_no_logvar", torch.tensor(float("-inf")))

    def _head(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return out, self._no_logvar.expand_as(out)

    def _loss(self, mean_n: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (mean_n - target).square().mean(dim=(1, 2))


class ProbabilisticEnsemble(EnsembleDynamics):
    """PETS-style ensemble: each member outputs a diagonal Gaussian, trained by Gaussian NLL.

    The log-variance is softly bounded between learned limits so it can neither
    collapse nor explode off-distribution (Chua et al., 2018, appendix A.1).
    """

    probabilistic = True

    def __init__(self, obs_dim: int, act_dim: int, members: int = 5, hidden: int = 200, layers: int = 3,
                 activation: str = "relu") -> None:
        super().__init__(obs_dim, act_dim, members, hidden, layers, activation)
        self.max_logvar = nn.Parameter(torch.full((obs_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((obs_dim,), -10.0))

    def _head(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean_n, logvar = out.chunk(2, dim=-1)
        return mean_n, soft_bound(logvar, self.min_logvar, self.max_logvar)

    def _loss(self, mean_n: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        nll = 0.5 * ((mean_n - target).square() * (-logvar).exp() + logvar)
        # Small pull of the bounds towards each other keeps them tight around the data.
        bound_reg = 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())
        return nll.mean(dim=(1, 2)) + bound_reg
