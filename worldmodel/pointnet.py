"""Permutation-invariant encoders for point sets (PointNet): what an agent that senses by LiDAR sees.

A point set is padded to a fixed ``P`` points with a validity mask, so a batch of robots that see
different numbers of points is one tensor. One MLP, shared by every point, embeds each point; masked
max- and mean-pooling over the points then make the set's embedding, which no order of the points
and no padded point can change; a last MLP maps it to the latent.

Shapes: ``...`` any leading dims (``B`` rows, ``N`` robots, ``T`` ticks), ``P`` points, ``D`` point
features, ``S`` own state, ``Z`` latent, ``O`` outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from worldmodel.nn import Normalizer


class PointNetEncoder(nn.Module):
    """A point set -> a latent: points (..., P, D) and mask (..., P) bool -> (..., Z).

    Max-pooling keeps the most extreme point along each feature (the nearest obstacle in some
    direction); mean-pooling keeps what the points say together (how crowded it is). An empty set
    (no valid point) pools to zeros, so it has one well-defined latent.
    """

    def __init__(self, point_dim: int, latent_dim: int, hidden: int = 64) -> None:
        """
        Args:
            point_dim: D, the features of one point.
            latent_dim: Z.
            hidden: width of the per-point MLP and of the MLP after the pooling.
        """
        super().__init__()
        for name, value in (("point_dim", point_dim), ("latent_dim", latent_dim), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.point_dim, self.out_dim = point_dim, latent_dim
        self.per_point = nn.Sequential(nn.Linear(point_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.post = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, latent_dim))

    def forward(self, points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args:
            points: (..., P, D) float; padded points may hold anything finite.
            mask: (..., P) bool, True for a valid point.

        Returns:
            (..., Z) the latent of each set.
        """
        if points.dim() < 2 or points.shape[-1] != self.point_dim:
            raise ValueError(f"points must be (..., P, {self.point_dim}), got shape {tuple(points.shape)}")
        if mask.shape != points.shape[:-1] or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool of shape {tuple(points.shape[:-1])} (points without D), "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        return self.post(pool(self.per_point(points), mask))


def pool(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked max and mean over the points: features (..., P, H), mask (..., P) -> (..., 2H).

    A padded point is excluded from both (not merely zeroed: a zero would win a max over negative
    features), and a set with no valid point gives zeros.
    """
    valid = mask.unsqueeze(-1)  # (..., P, 1)
    highest = features.masked_fill(~valid, float("-inf")).amax(-2)  # (..., H), -inf for an empty set
    highest = torch.where(mask.any(-1, keepdim=True), highest, 0.0)
    count = valid.sum(-2).clamp_min(1).to(features.dtype)  # (..., 1)
    mean = features.masked_fill(~valid, 0.0).sum(-2) / count
    return torch.cat([highest, mean], -1)


class PointSetNet(nn.Module):
    """A prediction from a robot's own state and its point set: own (..., S), points (..., P, D),
    mask (..., P) -> (..., O). With ``own_dim`` 0 it reads the points alone.

    Given only empty point sets the encoder's latent is one constant, so the same net is its own
    baseline "without the points".
    """

    def __init__(self, own_dim: int, point_dim: int, out_dim: int = 1, latent_dim: int = 32, hidden: int = 64) -> None:
        """
        Args:
            own_dim: S (0: no own state).
            point_dim: D.
            out_dim: O.
            latent_dim: Z, the point set's latent.
            hidden: width of the encoder's and the head's layers.
        """
        super().__init__()
        if isinstance(own_dim, bool) or not isinstance(own_dim, int) or own_dim < 0:
            raise ValueError(f"own_dim must be an int >= 0, got {own_dim!r}")
        if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
            raise ValueError(f"out_dim must be an int >= 1, got {out_dim!r}")
        self.own_dim = own_dim
        self.own_norm = Normalizer(own_dim)  # floor coordinates run to tens of metres: fit with ``fit_normalizer``
        self.encoder = PointNetEncoder(point_dim, latent_dim, hidden)
        self.head = nn.Sequential(nn.Linear(own_dim + latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                  nn.ReLU(), nn.Linear(hidden, out_dim))

    def fit_normalizer(self, own: torch.Tensor) -> None:
        """Standardise the own state by training rows (B, S)."""
        if self.own_dim:
            self.own_norm.fit(own)

    def forward(self, own: torch.Tensor, points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args:
            own: (..., S) the robot's own state.
            points: (..., P, D); mask: (..., P) bool, as ``PointNetEncoder`` takes them.

        Returns:
            (..., O).
        """
        if own.shape[-1] != self.own_dim or own.shape[:-1] != points.shape[:-2]:
            raise ValueError(f"own must be (..., {self.own_dim}) with the points' leading dims "
                             f"{tuple(points.shape[:-2])}, got {tuple(own.shape)}")
        z = self.encoder(points, mask)  # (..., Z)
        return self.head(torch.cat([self.own_norm(own), z], -1))
