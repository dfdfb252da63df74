"""Keypoints: where each feature channel of an image is, to a fraction of a cell (``SpatialSoftmax``).

Dimensions: ``B`` batch, ``K`` channels (keypoints), ``h, w`` feature map size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpatialSoftmax(nn.Module):
    """Each channel's position in [-1, 1]^2, found coarse and measured fine: (B, K, h, w) -> (B, 2K), x's then y's.

    Each channel is standardised over the image first, so both stages work in units of the channel's own
    spread: a disc of a few pixels outweighs a thousand floor pixels whatever the features' scale.

    Coarse: the softmax-weighted mean position, with a learned temperature. It finds the disc, but it cannot
    measure it: exponential weights put nearly all the mass on the brightest cell or two, whose camera noise
    decides the answer, so the position moves in jumps of a cell while the disc moves smoothly.

    Fine: the mean position weighted *linearly* by how far each cell's standardised value exceeds a learned
    threshold, inside a flat-topped window (a super-Gaussian, exp(-d^4 / 2 WINDOW^4)) around the coarse position:
    the window keeps the thousand noisy floor cells out, and its flat top does not pull the measurement towards
    the coarse position (a Gaussian window would). A linear weight follows the disc's partial coverage of its edge
    cells, which is what moves by a fraction of a cell when the agent does, so the change between frames (the
    velocity) can be read (``benchmarks/perception.py``'s readout measures it). A channel with little or nothing
    above its threshold in the window keeps (nearly) the coarse position.
    """

    RATE = 5.0
    """The temperature is exp(RATE * parameter): Adam moves a parameter by about its learning rate per step,
    and the temperature must be able to grow tenfold in hundreds of steps, not thousands."""
    PRIOR = 0.1
    """Weight of the coarse position in the fine stage, in the fine weights' units (standardised excess)."""
    WINDOW = 2.5
    """Half-width of the fine stage's window, in cells: a disc of a few cells, and the coarse stage's error, fit
    inside its flat top."""

    def __init__(self, channels: int, init_scale: float = 1.0, init_threshold: float = 1.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((channels, 1), float(torch.log(torch.tensor(init_scale))) / self.RATE))
        self.threshold = nn.Parameter(torch.full((channels, 1, 1), init_threshold))
        """(K, 1, 1) standardised value a cell must exceed to weigh in the fine stage."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k, h, w = x.shape
        flat = x.reshape(b, k, h * w)
        flat = (flat - flat.mean(-1, keepdim=True)) / (flat.std(-1, keepdim=True) + 1e-5)  # (B, K, h*w)
        ys = torch.linspace(1, -1, h, device=x.device, dtype=x.dtype)  # y up, as the arena's
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
        # coarse: where the channel is
        coarse = F.softmax(flat * (self.RATE * self.log_scale).exp(), dim=-1).view(b, k, h, w)
        cx, cy = (coarse.sum(2) * xs).sum(-1), (coarse.sum(3) * ys).sum(-1)  # (B, K) each
        # fine: linear weights above the threshold, in a window around it; separable, so the window is two vectors
        cell = 2.0 / max(h - 1, w - 1, 1)
        dx, dy = xs - cx[..., None], ys - cy[..., None]  # (B, K, w), (B, K, h) offsets from the coarse position
        wx = torch.exp(-(dx / (self.WINDOW * cell)) ** 4 / 2)
        wy = torch.exp(-(dy / (self.WINDOW * cell)) ** 4 / 2)
        weights = F.relu(flat.view(b, k, h, w) - self.threshold) * wy[..., :, None] * wx[..., None, :]  # (B, K, h, w)
        # The coarse position weighs in as PRIOR of mass: nothing next to a disc's tens, but where little or nothing
        # is above the threshold (a channel that tracks nothing) it stands, rather than a ratio of two tiny sums.
        # Offsets, not positions, are averaged: small numbers, so float rounding stays small too.
        mass = weights.sum((2, 3)) + self.PRIOR  # (B, K)
        fx = cx + (weights.sum(2) * dx).sum(-1) / mass
        fy = cy + (weights.sum(3) * dy).sum(-1) / mass
        return torch.cat([fx, fy], -1)  # (B, 2K)
