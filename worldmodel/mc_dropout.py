"""MC-dropout dynamics: one network whose E "members" are E dropout masks (Gal & Ghahramani, 2016).

An alternative to the probabilistic ensemble for epistemic uncertainty: one set of weights, trained
with dropout after every hidden layer, kept on at inference. Each call draws E masks, one per
member, shared by that member's rows, so the E outputs disagree where the data did not pin the
weights down. The head is the ensemble's (a Gaussian over the normalised delta with softly bounded
log-variance), so ``Prediction``, calibration, disagreement and the planners work unchanged.

Masks: in training one per row and member (plain dropout); the trainer's E member batches (their
bootstrap resamples) all train the one net, E x batch rows per step, as many as the ensemble's step;
at inference one per member, (E, 1, O) per hidden layer, drawn from torch's global generator at
every call, so each horizon step of a rollout sees fresh masks (PETS' TS-inf over sub-networks).
Every member runs in one batched program, with no Python loop over members or samples: in training
the E copies of the input go through each shared layer as one matmul; for planning, member e is the
net with its mask folded into the weights, and the E thinned nets run as the ensemble's members do
(``FoldedMCDropout``: the fused CPU kernel, the same per-call cost as an ensemble of E).

Shapes: ``E`` members (masks), ``B`` batch, ``S`` state, ``A`` action, ``O`` layer width.
"""

from __future__ import annotations

import torch
from torch import nn

from worldmodel import native
from worldmodel.dynamics import FoldedDynamics, ProbabilisticEnsemble
from worldmodel.nn import EnsembleLinear, FoldedMLP, fold_cached, member_inputs


def draw_masks(widths: list[int], members: int, rows: int, keep: float, like: torch.Tensor) -> list[torch.Tensor]:
    """Inverted-dropout masks, one per hidden layer: (E, rows, O) of 0 or 1/keep (ones when ``keep`` is 1).

    ``rows`` 1 shares a member's mask across its batch (inference); B gives every row its own (training).
    """
    if keep >= 1.0:
        return [like.new_ones(1, 1, o) for o in widths]
    return [torch.bernoulli(like.new_full((members, rows, o), keep)).div_(keep) for o in widths]


def masked_mlp(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor], activation: nn.Module,
               masks: list[torch.Tensor]) -> torch.Tensor:
    """One shared MLP applied to every member's rows with its masks: (E, B, I) -> (E, B, O_last).

    Args:
        weights, biases: per layer (1, I, O) and (1, 1, O), the shared weights (one-member ``EnsembleMLP``).
        masks: per hidden layer (E or 1, B or 1, O), multiplied after the activation.
    """
    for w, b, m in zip(weights[:-1], biases[:-1], masks):
        x = activation(torch.matmul(x, w[0]) + b[0]) * m  # (E, B, O): one matmul for all members
    return torch.matmul(x, weights[-1][0]) + biases[-1][0]


class MCDropoutDynamics(ProbabilisticEnsemble):
    """A probabilistic MLP with dropout whose ``members`` are dropout masks; the ensemble's interface.

    Args:
        obs_dim, act_dim: S and A.
        members: E masks drawn per call (the planners' members).
        hidden, layers, activation: the shared MLP, as the ensemble's members.
        dropout: probability of dropping a hidden unit, in [0, 1); 0 makes every member the same net.
    """

    def __init__(self, obs_dim: int, act_dim: int, members: int = 5, hidden: int = 64, layers: int = 2,
                 activation: str = "relu", dropout: float = 0.1) -> None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        super().__init__(obs_dim, act_dim, 1, hidden, layers, activation)  # one set of weights
        self.members, self.dropout = members, dropout
        self.widths = [hidden] * layers

    def _raw(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = self.in_norm(member_inputs(self.members, obs, action))  # (E, B, S+A)
        rows = x.shape[1] if self.training else 1
        masks = draw_masks(self.widths, self.members, rows, 1.0 - self.dropout, x)
        layers = [m for m in self.net.net if isinstance(m, EnsembleLinear)]
        return masked_mlp(x, [m.weight for m in layers], [m.bias for m in layers], self.net.net[1], masks)

    def folded(self) -> "FoldedMCDropout":
        """The inference form planners roll out; rebuilt whenever the weights change."""
        return fold_cached(self, lambda: FoldedMCDropout(self))


class FoldedMCDropout(FoldedDynamics):
    """``MCDropoutDynamics`` for planning: normalisers folded into the shared weights, no gradient to them.

    With one mask per member, member e is the net whose hidden units' outgoing weights are scaled by
    its mask: an ensemble of E thinned nets. ``mlp`` builds that ensemble's ``FoldedMLP`` (a few small
    tensors) with fresh masks at every access, and ``FoldedDynamics``' calls, which read it once per
    call, run it as they run the ensemble: on a CPU the whole step in the fused kernel.
    """

    # Not FoldedDynamics.__init__: that folds E weight sets; here one set is shared and thinned per call.
    def __init__(self, model: MCDropoutDynamics) -> None:
        s, std = model.obs_dim, model.delta_norm.std
        self.members, self.obs_dim, self.probabilistic = model.members, s, True
        self.widths, self.keep = model.widths, 1.0 - model.dropout
        out_scale = torch.cat([std, torch.ones_like(std)])
        out_shift = torch.cat([model.delta_norm.mean, torch.zeros_like(std)])
        folded = model.net.folded(model.in_norm, out_scale, out_shift)  # one member: (1, I, O) per layer
        self.weights, self.biases, self.activation = folded.weights, folded.biases, folded.activation
        self.min_logvar, self.max_logvar = model.min_logvar.detach(), model.max_logvar.detach()
        # log of the calibrated std per unit of exp(logvar / 2): std_raw * sqrt(var_scale).
        self.log_scale = 0.5 * torch.log(std.square() * model.var_scale)
        # As FoldedDynamics: bounds further apart than float32's exp holds keep torch's path for draws.
        fused = folded.kernel is not None
        self.head = native.GaussianHead(self.min_logvar, self.max_logvar, self.log_scale) if (
            fused and (self.max_logvar - self.min_logvar).max() < 80) else None
        self.fused_draws = self.head is not None

    @property
    def mlp(self) -> FoldedMLP:
        """E thinned nets with fresh masks: layer l+1's input rows times layer l's masks, (E, I, O) per layer."""
        e, w = self.members, self.weights
        masks = draw_masks(self.widths, e, 1, self.keep, w[0])  # (E or 1, 1, O) per hidden layer
        weights = [w[0].expand(e, -1, -1)] + [(wl * m.transpose(1, 2)).expand(e, -1, -1)
                                              for wl, m in zip(w[1:], masks)]
        return FoldedMLP(weights, [b.expand(e, -1, -1) for b in self.biases], self.activation)
