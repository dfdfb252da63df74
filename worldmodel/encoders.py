"""Perception encoders: raw observations -> the state the dynamics model works in.

Vector observations use the identity (the state is the observation) or an MLP;
image observations use a small convolutional network.

Shapes: ``B`` batch, ``D`` observation size, ``Z`` state size, ``C, Hp, Wp`` image.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class IdentityEncoder(nn.Module):
    """The observation is the state: (B, D) -> (B, D)."""

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.out_dim = obs_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs


class MLPEncoder(nn.Module):
    """A learned projection of vector observations: (B, D) -> (B, Z)."""

    def __init__(self, obs_dim: int, out_dim: int = 64, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        widths = [obs_dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for i, o in zip(widths[:-1], widths[1:]):
            blocks += [nn.Linear(i, o), nn.LayerNorm(o), nn.SiLU()]
        blocks.append(nn.Linear(widths[-1], out_dim))
        self.net = nn.Sequential(*blocks)
        self.out_dim = out_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class CNNEncoder(nn.Module):
    """A small strided CNN for images: (B, C, Hp, Wp) uint8 or float -> (B, Z).

    Four 4x4 stride-2 convolutions (as in World Models / Dreamer), then a linear
    projection. uint8 pixels are scaled to [-0.5, 0.5].
    """

    def __init__(self, image_shape: Sequence[int], out_dim: int = 64, depth: int = 32) -> None:
        super().__init__()
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
        c, h, w = image_shape
        if min(h, w) < 46:  # four 4x4 stride-2 convolutions leave a 1x1 map at 46 pixels
            raise ValueError(f"CNNEncoder needs images of at least 46x46 pixels, got {h}x{w}")
        self.image_shape = (c, h, w)
        chans = [c, depth, 2 * depth, 4 * depth, 8 * depth]
        convs: list[nn.Module] = []
        for i, o in zip(chans[:-1], chans[1:]):
            convs += [nn.Conv2d(i, o, kernel_size=4, stride=2), nn.SiLU()]
        self.convs = nn.Sequential(*convs, nn.Flatten())
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, c, h, w)).shape[1]
        self.proj = nn.Linear(flat, out_dim)
        self.out_dim = out_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if obs.shape[1:] != self.image_shape:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(obs.shape)}")
        x = obs.float() / 255.0 - 0.5 if obs.dtype == torch.uint8 else obs
        return self.proj(self.convs(x))


ENCODERS = ("identity", "mlp", "cnn")


def make_encoder(kind: str, obs_shape: Sequence[int], out_dim: int = 64) -> nn.Module:
    """Build an encoder by name for observations of ``obs_shape`` (without the batch axis)."""
    if kind == "identity":
        return IdentityEncoder(_vector_dim(kind, obs_shape))
    if kind == "mlp":
        return MLPEncoder(_vector_dim(kind, obs_shape), out_dim)
    if kind == "cnn":
        return CNNEncoder(obs_shape, out_dim)
    raise ValueError(f"unknown encoder {kind!r}; choose one of {', '.join(ENCODERS)}")


def _vector_dim(kind: str, obs_shape: Sequence[int]) -> int:
    if len(obs_shape) != 1:
        raise ValueError(f"the {kind} encoder needs vector observations, got shape {tuple(obs_shape)}")
    return int(obs_shape[0])
