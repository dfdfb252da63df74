"""The multi-agent world model: each robot's next physical state from its own state and its neighbours'.

A robot's step depends on the agents it touches: contacts push both apart and halt a robot (its bumper),
so what a neighbour does this tick (its action) matters as much as where it is.
Each neighbour slot becomes a token ``[dx, dy, dvx, dvy, distance, unit normal, closing speed,
one-hot kind, neighbour action]``; the robot's own embedding (physical state, task, shelf
vector and distance, action) attends over its tokens (additive attention: a slot's score and
value come from the token joined with the own embedding, so every value is a function of the
PAIR), with empty slots masked and a learned "no neighbour" token always present, so a lone
robot's row works. The weights are shared across slots: any number of robots on the floor,
the M nearest matter. A head MLP then predicts a Gaussian over the change of the physical
state (P = 4).

Members are vectorised as in ``EnsembleDynamics`` (one batched matmul per layer, slots
folded into the rows), trained by Gaussian NLL with softly bounded log-variances.

Shapes: ``E`` members, ``B`` rows, ``M`` slots, ``S`` observation, ``A`` action,
``P`` physical state, ``H`` hidden width, ``T`` token width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.config import FLEET_HEADS as HEADS
from worldmodel.dynamics import Prediction
from worldmodel.fleet_data import ObsLayout
from worldmodel.nn import ACTIVATIONS, EnsembleLinear, FoldedMLP, Normalizer, expand_members, fold_cached, soft_bound

PAIR_FEATURES = 8
"""A slot token's geometric features: dx, dy, dvx, dvy, distance, unit normal (2), closing speed."""

class FleetEnsemble(nn.Module):
    """E attention models predicting each robot's next physical state (``layout.phys``)."""

    probabilistic = True

    def __init__(self, layout: ObsLayout, act_dim: int, members: int = 5, hidden: int = 64, layers: int = 2,
                 activation: str = "relu") -> None:
        """
        Args:
            layout: where the observation keeps the parts the model reads.
            act_dim: A.
            members: E.
            hidden: H, the width of every layer (a multiple of the heads).
            layers: hidden layers of the head MLP after the attention.
        """
        super().__init__()
        # Each head weighs the slots on its own and reads its own share of the slot values.
        if hidden % HEADS:
            raise ValueError(f"hidden must be a multiple of {HEADS} (the attention heads), got {hidden}")
        self.layout, self.act_dim, self.members, self.hidden = layout, act_dim, members, hidden
        self.obs_dim, p = layout.obs_dim, layout.phys_dim
        own_dim = p + _width(layout.task) + _width(layout.shelf) + 1 + act_dim
        self.cont_dim = PAIR_FEATURES + act_dim  # a token's continuous part
        self.own_norm, self.token_norm = Normalizer(own_dim), Normalizer(self.cont_dim)
        self.delta_norm = Normalizer(p)
        e, h = members, hidden
        self.own = EnsembleLinear(e, own_dim, h)
        self.token = EnsembleLinear(e, self.cont_dim + layout.kinds, h)
        # One layer encodes a pair (token + own share); a second measured ~10% lower error near others
        # for twice the FLOPs, which planning 200 robots cannot spare.
        self.pair = EnsembleLinear(e, h, h)  # the own embedding's share of every pair encoding
        self.score = EnsembleLinear(e, h, HEADS)
        self.no_neighbour = nn.Parameter(0.1 * torch.randn(e, 1, h))  # a token always present, never masked
        widths = [2 * h] + [h] * layers
        self.head = nn.ModuleList([EnsembleLinear(e, i, o) for i, o in zip(widths[:-1], widths[1:])]
                                  + [EnsembleLinear(e, h, 2 * p)])
        self.act = ACTIVATIONS[activation]()
        self.max_logvar = nn.Parameter(torch.full((p,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((p,), -10.0))
        self.register_buffer("var_scale", torch.ones(p))

    # --- inputs ----------------------------------------------------------------------------------
    def _own(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Own features (..., P + task + shelf + 1 + A): the shelf's distance too, as contact is a threshold on it."""
        lay = self.layout
        shelf = obs[..., lay.shelf]
        return torch.cat([obs[..., lay.phys], obs[..., lay.task], shelf, shelf.norm(dim=-1, keepdim=True), action], -1)

    def _slots(self, obs: torch.Tensor, neighbour_actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slot tokens' continuous parts (..., M, PAIR_FEATURES + A) and kinds (..., M) long.

        Besides the slot's offset and relative velocity, the pair's distance, unit normal and closing
        speed along it: contacts act along the normal once the distance falls below two radii, which a
        small ReLU network would otherwise spend most of its width approximating.
        """
        slots = obs[..., self.layout.neighbours].unflatten(-1, (self.layout.slots, ObsLayout.SLOT_WIDTH))
        kind = slots[..., 4].round().long().clamp(0, self.layout.kinds - 1)
        offset, rel_vel = slots[..., :2], slots[..., 2:4]
        # x and y apart: torch's norms and sums over a last dim of 2 are several passes slower.
        dist = torch.hypot(slots[..., 0], slots[..., 1]).unsqueeze(-1)  # (..., M, 1)
        normal = offset / dist.clamp_min(1e-6)
        closing = torch.addcmul(rel_vel[..., 0:1] * normal[..., 0:1], rel_vel[..., 1:2], normal[..., 1:2])
        return torch.cat([offset, rel_vel, dist, normal, closing, neighbour_actions], -1), kind

    @torch.no_grad()
    def fit_normalizers(self, obs: torch.Tensor, action: torch.Tensor, neighbour_actions: torch.Tensor,
                        new_obs: torch.Tensor) -> None:
        """Fit input and delta statistics from training rows: (B, S), (B, A), (B, M, A), (B, S)."""
        self.own_norm.fit(self._own(obs, action))
        cont, kind = self._slots(obs, neighbour_actions)
        filled = cont[kind > 0]  # (F, PAIR_FEATURES + A) only slots that hold someone
        self.token_norm.fit(filled if len(filled) > 1 else cont.flatten(0, -2))
        phys = self.layout.phys
        self.delta_norm.fit(new_obs[..., phys] - obs[..., phys])

    # --- network ---------------------------------------------------------------------------------
    def _raw(self, obs: torch.Tensor, action: torch.Tensor, neighbour_actions: torch.Tensor) -> torch.Tensor:
        """The head's output (E, B, 2P): normalised mean delta and raw log-variance."""
        e, m = self.members, self.layout.slots
        obs, action = expand_members(obs, e), expand_members(action, e)  # (E, B, S), (E, B, A)
        if neighbour_actions.dim() == 3:
            neighbour_actions = neighbour_actions.unsqueeze(0).expand(e, *neighbour_actions.shape)
        b = obs.shape[1]
        own = self.act(self.own(self.own_norm(self._own(obs, action))))  # (E, B, H)
        cont, kind = self._slots(obs, neighbour_actions)  # (E, B, M, PAIR_FEATURES + A), (E, B, M)
        token = torch.cat([self.token_norm(cont), F.one_hot(kind, self.layout.kinds).to(cont)], -1)
        token = self.token(token.flatten(1, 2)).unflatten(1, (b, m))  # (E, B, M, H)
        shared = self.pair(own)  # (E, B, H) the own embedding's share of every pair
        # The "no neighbour" token apart from the slots: joining it to them would copy every (E, B, M, H) tensor.
        pair = self.act(token.add_(shared.unsqueeze(2)))  # (E, B, M, H)
        lone = self.act(self.no_neighbour + shared)  # (E, B, H)
        score = torch.cat([_narrow(self.score, pair.flatten(1, 2)).unflatten(1, (b, m)),
                           _narrow(self.score, lone).unsqueeze(2)], 2)  # (E, B, M+1, heads)
        empty = torch.cat([kind == 0, torch.zeros_like(kind[..., :1], dtype=torch.bool)], -1)  # (E, B, M+1)
        weight = score.masked_fill(empty.unsqueeze(-1), float("-inf")).softmax(2)  # (E, B, M+1, heads)
        heads = (HEADS, self.hidden // HEADS)
        values = pair.unflatten(-1, heads)  # (E, B, M, heads, H/heads)
        lone_value = lone.unflatten(-1, heads)  # (E, B, heads, H/heads)
        read = (weight[:, :, :m].unsqueeze(-1) * values).sum(2) + weight[:, :, m].unsqueeze(-1) * lone_value
        return self._head_mlp(own, read.flatten(-2))  # (E, B, 2P)

    def _head_mlp(self, own: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
        """The head MLP on [own, read] (E, B, H) each -> (E, B, 2P).

        Without gradients (planning) and on one torch thread, as a ``FoldedMLP``: on a CPU fleetwm's fused
        kernel, every layer on a cache-sized tile of rows and the two parts joined as it loads them, where
        torch makes a pass over the rows per op (a fleet plan 10-15% faster). Not on more threads: the
        kernel's OpenMP pool and torch's then spin against each other between the many small ops of a fleet
        step (a 200-robot plan took seconds instead of 0.1-0.2 s with 2 threads on a loaded 2-core machine).
        """
        if not torch.is_grad_enabled() and torch.get_num_threads() == 1:
            return fold_cached(self, self._folded_head)(own, read)
        x = torch.cat([own, read], -1)  # (E, B, 2H)
        for layer in self.head[:-1]:
            x = self.act(layer(x))
        return _narrow(self.head[-1], x)

    def _folded_head(self) -> FoldedMLP:
        return FoldedMLP([layer.weight.detach() for layer in self.head], [layer.bias.detach() for layer in self.head],
                         self.act)

    def _head(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean_n, logvar = out.chunk(2, dim=-1)
        return mean_n, soft_bound(logvar, self.min_logvar, self.max_logvar)

    # --- the dynamics protocol -------------------------------------------------------------------
    def forward(self, obs: torch.Tensor, action: torch.Tensor, neighbour_actions: torch.Tensor) -> Prediction:
        """Predict every robot's next physical state.

        Args:
            obs: (B, S) shared by all members, or (E, B, S).
            action: (B, A) or (E, B, A), the robot's own action.
            neighbour_actions: (B, M, A) or (E, B, M, A), the action of the robot in each slot
                (zeros for humans and empty slots; ``fleet_data.neighbour_actions``).

        Returns:
            Prediction with mean and var of shape (E, B, P): the next ``layout.phys`` in raw units.
        """
        mean_n, logvar = self._head(self._raw(obs, action, neighbour_actions))
        phys = expand_members(obs, self.members)[..., self.layout.phys]
        mean = phys + self.delta_norm.inverse(mean_n)
        var = logvar.exp() * self.delta_norm.std.square()
        return Prediction(mean, var, self.var_scale)

    def _target(self, obs: torch.Tensor, new_obs: torch.Tensor) -> torch.Tensor:
        phys = self.layout.phys
        return self.delta_norm(new_obs[..., phys] - obs[..., phys])

    def loss(self, obs: torch.Tensor, action: torch.Tensor, neighbour_actions: torch.Tensor,
             new_obs: torch.Tensor) -> torch.Tensor:
        """Gaussian NLL of each member on its own batch: (E, B, S), (E, B, A), (E, B, M, A), (E, B, S) -> (E,)."""
        mean_n, logvar = self._head(self._raw(obs, action, neighbour_actions))
        target = self._target(obs, new_obs)
        nll = 0.5 * ((mean_n - target).square() * (-logvar).exp() + logvar)
        bound_reg = 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())  # keeps the bounds near the data
        return nll.mean(dim=(1, 2)) + bound_reg

    def val_loss(self, obs: torch.Tensor, action: torch.Tensor, neighbour_actions: torch.Tensor,
                 new_obs: torch.Tensor) -> torch.Tensor:
        """Early-stopping criterion: MSE of the normalised mean delta, shapes as ``loss`` -> (E,)."""
        mean_n, _ = self._head(self._raw(obs, action, neighbour_actions))
        return (mean_n - self._target(obs, new_obs)).square().mean(dim=(1, 2))

    def flops_per_sample(self) -> int:
        """FLOPs of one member predicting one row (matmuls only)."""
        m = self.layout.slots
        once = _macs(self.own) + _macs(self.pair) + sum(_macs(layer) for layer in self.head)
        per_token = (m + 1) * _macs(self.score) + m * _macs(self.token)
        return 2 * (once + per_token)


def _narrow(layer: EnsembleLinear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` (E, B, I) -> (E, B, O) for a layer of few outputs, as (W^T x^T)^T: with the B rows on the
    matmul's wide side it runs 3-4x faster on CPUs than x W for O = 4 or 8 (the same sums, another order)."""
    return torch.bmm(layer.weight.transpose(1, 2), x.transpose(1, 2)).transpose(1, 2) + layer.bias


def _width(s: slice) -> int:
    return s.stop - s.start


def _macs(layer: EnsembleLinear) -> int:
    return layer.weight.shape[1] * layer.weight.shape[2]
