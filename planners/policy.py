"""A small deterministic policy network: what the planners fall back on, sample around, or serve alone.

The policy sees what the planner's objective sees: the observation and, for Nav2D, the no-fly
zones of the request (``Params[ZONES]``), so goals and constraints that change per request are
inputs rather than baked in. It is plain torch; training (RLlib, on the world model's imagined
rollouts) lives in ``learners/`` and exports this module.

Shapes: ``N`` agents, ``S`` state, ``A`` action, ``Z`` zones, ``F`` policy input features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn

from planners.objectives import ZONES, Params
from worldmodel.envs.nav2d import POS_DIMS

POLICY_ZONES = 4
"""Zones the policy sees: the nearest ``POLICY_ZONES`` of a request's zones, padded with zeros."""
ZONE_FEATURES = 3
"""Features per zone: centre relative to the agent (cx - x, cy - y) and radius r."""

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU}


@dataclass(frozen=True)
class PolicyConfig:
    """The policy network's size, chosen for serving.

    ``act`` for 1,000 agents with zones on one CPU thread (median of 200 calls; torch 2.13 on the
    2-core dev VM): silu 64 x 2 0.33 ms (0.17 ms without zones), 128 x 2 0.61 ms, 64 x 3 0.42 ms;
    relu 64 x 2 0.31 ms; tanh 64 x 2 0.58 ms, 128 x 2 1.1 ms (tanh costs about twice a silu here).
    The zone features (a sort and a gather) are about 0.15 ms of each. The default meets the < 1 ms
    target with room left for the shield and the serving path.
    """

    hidden: int = 64
    """Units per hidden layer."""
    layers: int = 2
    """Hidden layers (>= 1)."""
    activation: str = "silu"
    """Hidden activation: 'silu' (smooth, fast on CPUs), 'relu' or 'tanh'."""

    def __post_init__(self) -> None:
        if not isinstance(self.hidden, int) or self.hidden < 1:
            raise ValueError(f"PolicyConfig.hidden must be an int >= 1, got {self.hidden!r}")
        if not isinstance(self.layers, int) or self.layers < 1:
            raise ValueError(f"PolicyConfig.layers must be an int >= 1, got {self.layers!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"PolicyConfig.activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def feature_dim(obs_dim: int, zones: bool) -> int:
    """F: the observation's S, plus ``POLICY_ZONES * ZONE_FEATURES`` when the policy sees zones."""
    return obs_dim + (POLICY_ZONES * ZONE_FEATURES if zones else 0)


def policy_features(obs: torch.Tensor, params: Params | None, zones: bool) -> torch.Tensor:
    """The policy's raw (unnormalised) input: (N, S) -> (N, F).

    Layout: ``obs`` as it is, then (``zones=True``) ``POLICY_ZONES`` slots of (cx - x, cy - y, r),
    nearest first. "Nearest" is by distance to the zone's edge (centre distance minus radius), so a
    large zone close by outranks a small one whose centre is nearer. Missing zones, padding slots
    (r = 0) and ``params`` without ``ZONES`` give zero slots, which sort last.
    """
    if not zones:
        return obs
    n = obs.shape[0]
    zone = params.get(ZONES) if params else None
    if zone is None or zone.shape[1] == 0:
        return torch.cat([obs, obs.new_zeros(n, POLICY_ZONES * ZONE_FEATURES)], -1)
    if zone.dim() != 3 or zone.shape[0] != n or zone.shape[2] != ZONE_FEATURES:
        raise ValueError(f"params[{ZONES!r}] must be (N, Z, 3) with N = {n}, got {tuple(zone.shape)}")
    zone = zone.to(obs)
    if zone.shape[1] < POLICY_ZONES:  # pad so that there are always POLICY_ZONES slots to take
        zone = torch.cat([zone, zone.new_zeros(n, POLICY_ZONES - zone.shape[1], ZONE_FEATURES)], 1)
    rel = zone[..., :2] - obs[:, None, POS_DIMS]  # (N, Z, 2)
    radius = zone[..., 2]  # (N, Z)
    real = radius > 0
    edge = torch.where(real, torch.linalg.vector_norm(rel, dim=-1) - radius, torch.inf)  # (N, Z)
    # Stable: only zones at exactly equal distance keep the request's order, which float data rarely has.
    order = torch.argsort(edge, dim=1, stable=True)[:, :POLICY_ZONES]  # (N, POLICY_ZONES)
    slots = torch.cat([rel, radius[..., None]], -1) * real[..., None]  # (N, Z, 3), padding zeroed
    nearest = slots.gather(1, order[..., None].expand(-1, -1, ZONE_FEATURES))  # (N, POLICY_ZONES, 3)
    return torch.cat([obs, nearest.flatten(1)], -1)


class PolicyNet(nn.Module):
    """A deterministic actor: features (N, F) -> the mean action (N, A), squashed into the action box.

    Input normalisation is part of the network (buffers fitted by the trainer with
    ``set_normalisation``), so ``features`` are raw and the same for the imagined env, the trainer's
    critic and serving. Everything the network needs (bounds, statistics) is a buffer, so ``.to``
    moves it whole and ``act`` runs on whatever device the observations and weights share.
    """

    def __init__(self, obs_dim: int, act_dim: int, act_low: Sequence[float] | torch.Tensor,
                 act_high: Sequence[float] | torch.Tensor, cfg: PolicyConfig = PolicyConfig(),
                 zones: bool = False) -> None:
        super().__init__()
        low = torch.as_tensor(act_low, dtype=torch.float32).reshape(-1)
        high = torch.as_tensor(act_high, dtype=torch.float32).reshape(-1)
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"obs_dim and act_dim must be >= 1, got {obs_dim} and {act_dim}")
        if low.shape != (act_dim,) or high.shape != (act_dim,):
            raise ValueError(f"act_low and act_high must have act_dim = {act_dim} entries, got "
                             f"{tuple(low.shape)} and {tuple(high.shape)}")
        if not (torch.isfinite(low).all() and torch.isfinite(high).all() and (low < high).all()):
            raise ValueError(f"action bounds must be finite with low < high, got {low.tolist()}, {high.tolist()}")
        self.obs_dim, self.act_dim, self.cfg, self.zones = obs_dim, act_dim, cfg, zones
        f = feature_dim(obs_dim, zones)
        self.register_buffer("act_low", low)
        self.register_buffer("act_high", high)
        self.register_buffer("feature_mean", torch.zeros(f))
        self.register_buffer("feature_std", torch.ones(f))
        act = _ACTIVATIONS[cfg.activation]
        widths = [f] + [cfg.hidden] * cfg.layers
        body: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            body += [nn.Linear(fan_in, fan_out), act()]
        self.body = nn.Sequential(*body)
        self.head = nn.Linear(cfg.hidden, act_dim)
        # A near-zero head starts every action near the box's centre: a neutral policy for PPO to move.
        with torch.no_grad():
            self.head.weight.mul_(0.01)
            self.head.bias.zero_()

    @property
    def feature_dim(self) -> int:
        """F, the length of the input ``features`` returns."""
        return self.feature_mean.shape[0]

    @torch.no_grad()
    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the input statistics: (F,), (F,); a std below 1e-6 (a constant feature) counts as 1."""
        mean = torch.as_tensor(mean, dtype=torch.float32)
        std = torch.as_tensor(std, dtype=torch.float32)
        f = self.feature_dim
        if mean.shape != (f,) or std.shape != (f,):
            raise ValueError(f"mean and std must be (F,) = ({f},), got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std >= 0).all()):
            raise ValueError("normalisation mean and std must be finite, std >= 0")
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std))

    def features(self, obs: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """Raw input features: (N, S) -> (N, F); see ``policy_features``."""
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs must be (N, S) with S = {self.obs_dim}, got {tuple(obs.shape)}")
        return policy_features(obs, params, self.zones)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The mean action: (N, F) -> (N, A), inside [act_low, act_high]."""
        x = (features - self.feature_mean) / self.feature_std
        squashed = torch.tanh(self.head(self.body(x)))  # (N, A) in (-1, 1)
        return torch.addcmul(self.act_low, squashed + 1, (self.act_high - self.act_low) * 0.5)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """The ``ActionPolicy`` the planners call: obs (N, S), params -> actions (N, A)."""
        return self(self.features(obs, params))
