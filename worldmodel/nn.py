"""Vectorised building blocks: E independent networks evaluated in one batched matmul.

Dimension glossary (used across fleetwm): ``E`` ensemble members, ``B`` batch,
``S`` state, ``A`` action, ``I``/``O`` layer input/output width.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel import native


class EnsembleLinear(nn.Module):
    """E independent linear layers: (E, B, I) -> (E, B, O) with one ``baddbmm``."""

    def __init__(self, members: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim))
        # Same init as nn.Linear, drawn independently per member so members disagree off-data.
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not baddbmm: its copy of the broadcast (E, 1, O) bias is several times slower on CPU
        # than the in-place add (safe for autograd: bmm's backward does not read its output).
        return torch.bmm(x, self.weight).add_(self.bias)

    def extra_repr(self) -> str:
        e, i, o = self.weight.shape
        return f"members={e}, in_dim={i}, out_dim={o}"


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    # ReLU is the default: on CPUs SiLU (swish, PETS' choice) spends longer in exp than a
    # 64-wide layer spends in its matmul, and planning with ReLU models scored as well here.
    # In place, as its backward needs only its output; SiLU's and Hardswish's need their input.
    "relu": lambda: nn.ReLU(inplace=True),
    "silu": nn.SiLU,
    "hardswish": nn.Hardswish,
}


class EnsembleMLP(nn.Module):
    """E independent MLPs: (E, B, I) -> (E, B, O)."""

    def __init__(self, members: int, in_dim: int, out_dim: int, hidden: int, layers: int,
                 activation: str = "relu") -> None:
        super().__init__()
        if members < 1 or hidden < 1 or layers < 1:
            raise ValueError(f"members, hidden and layers must be >= 1, got {members}, {hidden}, {layers}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        widths = [in_dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for i, o in zip(widths[:-1], widths[1:]):
            blocks += [EnsembleLinear(members, i, o), ACTIVATIONS[activation]()]
        blocks.append(EnsembleLinear(members, widths[-1], out_dim))
        self.net = nn.Sequential(*blocks)
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def flops_per_sample(self) -> int:
        """Multiply-adds x2 of one member on one input row (activations not counted)."""
        return sum(2 * m.weight.shape[1] * m.weight.shape[2] for m in self.modules() if isinstance(m, EnsembleLinear))

    def folded(self, in_norm: "Normalizer", out_scale: torch.Tensor, out_shift: torch.Tensor) -> "FoldedMLP":
        """This MLP applied to ``in_norm``-standardised inputs, its outputs times ``out_scale`` plus
        ``out_shift`` ((O,) each), as one ``FoldedMLP``: the affine maps folded into the first and last layers."""
        layers = [m for m in self.net if isinstance(m, EnsembleLinear)]
        weights = [m.weight.detach() for m in layers]
        biases = [m.bias.detach() for m in layers]
        # ((x - mu) / sd) @ W + b == x @ (W / sd) + (b - (mu / sd) @ W), per member.
        shift = (in_norm.mean / in_norm.std) @ weights[0]  # (E, O)
        weights[0] = weights[0] / in_norm.std[:, None]
        biases[0] = biases[0] - shift[:, None]
        weights[-1] = weights[-1] * out_scale
        biases[-1] = biases[-1] * out_scale + out_shift
        return FoldedMLP(weights, biases, self.net[1])


class FoldedMLP:
    """An ``EnsembleMLP`` for inference: normalisers folded into its weights, no autograd through the
    weights (inputs still get gradients). Built by ``EnsembleMLP.folded``; same outputs to float rounding.

    Planning runs the same small MLP hundreds of times per decision; at 64 units torch's passes over
    the activations between matmuls cost about as much as the matmuls, and each op's dispatch costs
    as much again for a small fleet. So on a CPU, for float32 ReLU networks, it runs fleetwm's fused
    kernel (``worldmodel.native``: every layer on a cache-sized tile of rows, the input parts joined
    on the fly), unless its inputs need gradients (gradient MPC) or the kernel cannot be built here.
    Otherwise each hidden layer is a batched matmul then one fused bias+ReLU pass (CPU float32).
    """

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor], activation: nn.Module) -> None:
        self.weights, self.biases = weights, biases
        self.hidden = list(zip(weights[:-1], biases[:-1]))
        self.activation = activation
        self.members = weights[0].shape[0]
        # aten's fused add+ReLU exists for CPU float32 tensors only, and has no gradient.
        self.fuse = (isinstance(activation, nn.ReLU) and weights[0].device.type == "cpu"
                     and weights[0].dtype == torch.float32)
        self.kernel = self._packed()

    def _packed(self) -> "native.PackedMLP | None":
        lib = native.library() if self.fuse else None
        return native.PackedMLP(lib, self.weights, self.biases) if lib is not None else None

    # The kernel holds a loaded library, which neither pickles nor copies: a model that has planned
    # (and cached this form) is pickled and copied without it, and gets this machine's back.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "kernel"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.kernel = self._packed()

    def native_for(self, *tensors: torch.Tensor) -> "native.PackedMLP | None":
        """The fused kernel, if it can take these inputs: CPU float32 tensors that need no gradient."""
        if self.kernel is None or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
            return None
        return self.kernel if self.kernel.takes(*tensors) else None

    def __call__(self, *parts: torch.Tensor) -> torch.Tensor:
        """``parts`` ((B, D_i) shared by every member, or (E, B, D_i)) side by side as the input: (E, B, O)."""
        kernel = self.native_for(*parts)
        if kernel is not None:
            return kernel(list(parts))
        x = member_inputs(self.members, *parts)
        fuse = self.fuse and not (torch.is_grad_enabled() and x.requires_grad)
        for w, b in self.hidden:
            x = torch.ops.aten._add_relu_(torch.bmm(x, w), b) if fuse else self.activation(torch.bmm(x, w) + b)
        return torch.bmm(x, self.weights[-1]).add_(self.biases[-1])


Folded = TypeVar("Folded")


def fold_cached(module: nn.Module, build: Callable[[], Folded]) -> Folded:
    """``build()``'s result, cached on ``module`` until one of its parameters or buffers changes.

    Training steps, ``load_state_dict`` and ``.to()`` all change a tensor's storage or its
    version counter, so an inference form built from old weights is not used. Writes that bypass
    the counter do not invalidate it: assignments through ``.data`` and fused optimiser steps
    (``AdamW(fused=True)``); fleetwm's trainer makes neither.
    """
    key = _state_key(module.parameters(), module.buffers())
    cached = module.__dict__.get("_folded")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, build())
        module.__dict__["_folded"] = cached
    return cached[1]


def _state_key(*groups: Iterable[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    return tuple((t.data_ptr(), t._version) for group in groups for t in group)


def soft_bound(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``x`` squashed smoothly into (low, high) by two softplus (PETS' bounded log-variance)."""
    x = high - F.softplus(high - x)
    return low + F.softplus(x - low)


class Normalizer(nn.Module):
    """Per-feature standardisation fitted from data; statistics travel in the state dict."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Fit from rows x: (B, D). Constant features keep std 1 so they pass through unscaled."""
        x = x.reshape(-1, x.shape[-1]).to(self.mean)
        std = x.std(dim=0, unbiased=False)
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


def variance(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Population variance along ``dim`` (``x.var(dim, unbiased=False)``).

    Written out because torch's CPU reduction over a non-innermost dimension is about 10x
    slower than these two passes at the shapes planning uses ((E, N, S) over E, (N, K, H, A) over K).
    """
    return (x - x.mean(dim, keepdim=True)).square().mean(dim)


def member_inputs(members: int, *parts: torch.Tensor) -> torch.Tensor:
    """``parts`` ((B, D_i) or (E, B, D_i) each) side by side as every member's input: (E, B, sum D_i)."""
    return torch.cat([expand_members(p, members) for p in parts], -1)


def expand_members(x: torch.Tensor, members: int) -> torch.Tensor:
    """(B, D) -> (E, B, D) as a view; an (E, B, D) input passes through."""
    if x.dim() == 2:
        return x.unsqueeze(0).expand(members, *x.shape)
    if x.dim() == 3 and x.shape[0] == members:
        return x
    raise ValueError(f"expected (B, D) or ({members}, B, D), got shape {tuple(x.shape)}")
