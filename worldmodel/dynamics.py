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

from worldmodel import native
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
    def fit_normalizers(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> None:
        """Fit input and delta statistics from training rows: (B, S), (B, A), (B, S)."""
        self.in_norm.fit(torch.cat([obs, action], -1))
        self.delta_norm.fit(new_obs - obs)

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

    def loss(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> torch.Tensor:
        """Training loss of each member on its own batch: inputs (E, B, *) -> (E,)."""
        mean_n, logvar = self._head(self._raw(obs, action))
        target = self.delta_norm(new_obs - obs)
        return self._loss(mean_n, logvar, target)

    def val_loss(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> torch.Tensor:
        """Early-stopping criterion of each member: MSE of the normalised mean delta, (E, B, *) -> (E,).

        Not the NLL: held-out NLL starts rising as soon as the variances grow overconfident,
        long before the means stop improving, and calibration.py rescales variances afterwards.
        """
        mean_n, _ = self._head(self._raw(obs, action))
        return (mean_n - self.delta_norm(new_obs - obs)).square().mean(dim=(1, 2))

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
    calibrated standard deviation is one ``exp``. On a CPU a whole step (MLP, mean, bounded
    log-variance, draw) is one call of the fused kernel (``worldmodel.native``), which also draws
    the noise itself when given a seed. No gradient reaches the weights; actions still get theirs
    (gradient MPC, through torch's path). Shapes as ``EnsembleDynamics.forward``.
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
        # The kernel draws with exp(max_logvar - min_logvar) as a constant: bounds further apart than
        # float32's exp can hold (never seen in training) keep torch's path for draws.
        self.head = native.GaussianHead(self.min_logvar, self.max_logvar, self.log_scale) if (
            self.mlp.kernel is not None and self.probabilistic
            and (self.max_logvar - self.min_logvar).max() < 80) else None
        self.fused_draws = self.mlp.kernel is not None and (self.head is not None or not self.probabilistic)

    def _out(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obs = expand_members(obs, self.members)
        return obs, self.mlp(obs, action)

    def mean(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Each member's predicted next state: (B, S) or (E, B, S) -> (E, B, S)."""
        kernel = self.mlp.native_for(obs, action)
        if kernel is not None:
            return kernel.gaussian_step(obs, action, None, None)[0]
        obs, out = self._out(obs, action)
        return obs + out[..., :self.obs_dim]

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None,
              like: torch.Tensor) -> torch.Tensor | list[int]:
        """Standard normal noise for ``shape[0]`` steps of ``sample``, (T, E, B, S): drawn here, or
        where the fused kernel draws its own (``like`` a CPU float32 tensor), one seed per step for it."""
        if self.fused_draws and native.PackedMLP.takes(like):
            return torch.randint(-2**63, 2**63 - 1, (shape[0],), generator=generator).tolist()
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)

    def sample(self, obs: torch.Tensor, action: torch.Tensor, noise: torch.Tensor | int, want_mean: bool = True,
               out: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Each member's predicted next state and its draw, as ``Prediction.sample`` draws it:
        ((E, B, S), (E, B, S)). A deterministic model's draw is its mean.

        Args:
            noise: (E, B, S) standard normal draws, or a seed (one step of ``noise``): the fused
                kernel draws from a counter-based stream, torch's path from a generator so seeded.
            want_mean: False when only the draw is needed; the mean returned may then be None.
            out: a previous draw the fused kernel may write this draw into (a rollout's state
                buffer, kept in cache); ignored by torch's path.
        """
        kernel = self.mlp.native_for(obs, action, *([noise] if isinstance(noise, torch.Tensor) else [])) if (
            self.fused_draws) else None
        if kernel is not None:  # the whole step in one pass (worldmodel.native)
            reuse = out is not None and kernel.fits_step(out, obs.shape[-2], self.obs_dim)
            return kernel.gaussian_step(obs, action, self.head, noise if self.probabilistic else None,
                                        want_mean, out if reuse else None)
        obs, raw = self._out(obs, action)
        mean = obs + raw[..., :self.obs_dim]
        if not self.probabilistic:
            return mean, mean
        if not isinstance(noise, torch.Tensor):
            gen = torch.Generator(device=mean.device).manual_seed(noise % 2**64)
            noise = torch.randn(mean.shape, generator=gen, device=mean.device, dtype=mean.dtype)
        logvar = soft_bound(raw[..., self.obs_dim:], self.min_logvar, self.max_logvar)
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
