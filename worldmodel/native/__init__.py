"""fleetwm's native CPU kernel: the fused MLP and dynamics step that planning runs on CPUs.

Torch runs a 64-unit MLP as one matmul and one pass per layer over the whole batch, and at that
width the passes cost as much as the arithmetic. ``fused_mlp.cpp`` runs every layer on a tile of
rows that stays in L1 cache, with the biases, ReLUs, the input join and a dynamics model's Gaussian
draw applied in registers. ``build.py`` compiles it on first use; where it cannot (no compiler,
``FLEETWM_NATIVE=0``), ``library()`` is None and the models keep torch's path.
"""

from __future__ import annotations

import ctypes

import torch

from worldmodel.native.build import Library, library, status

__all__ = ["GaussianHead", "Library", "PackedMLP", "library", "standard_normal", "status"]

_P, _L = ctypes.c_void_p, ctypes.c_long


def standard_normal(shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor | None:
    """CPU float32 standard normal draws from the kernel's counter-based stream, seeded from ``generator``
    (so seeded callers stay deterministic), faster than ``torch.randn`` on a CPU.
    None where the kernel is not available."""
    lib = library()
    if lib is None:
        return None
    out = torch.empty(shape, dtype=torch.float32)
    seed = int(torch.randint(-2**63, 2**63 - 1, (), generator=generator)) % 2**64
    if out.numel():
        lib.normal(out.data_ptr(), out.numel(), seed, torch.get_num_threads())
    return out


class PackedMLP:
    """An ensemble MLP's weights laid out for the kernel, and the call that runs it.

    Args:
        lib: the loaded kernel.
        weights: per layer (E, I, O) float32 CPU tensors; ReLU between layers.
        biases: per layer (E, 1, O).
    """

    def __init__(self, lib: Library, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> None:
        self.lib = lib
        self.members, self.in_dim = weights[0].shape[:2]
        self.out_dim = weights[-1].shape[2]
        pad = lambda n: -(-n // lib.vector_width) * lib.vector_width  # noqa: E731
        dims, chunks, k = [self.in_dim], [], self.in_dim
        for i, (w, b) in enumerate(zip(weights, biases)):
            last_dot = i == len(weights) - 1 and w.shape[2] == 1 and k % lib.vector_width == 0
            o = 1 if last_dot else pad(w.shape[2])  # a one-output last layer runs as dot products
            padded = w.new_zeros(self.members, k, o)  # extra rows meet the previous layer's zero columns
            padded[:, :w.shape[1], :w.shape[2]] = w
            bias = b.new_zeros(self.members, o)
            bias[:, :w.shape[2]] = b.reshape(self.members, -1)
            chunks += [padded.reshape(self.members, -1), bias]
            dims.append(o)
            k = o
        self.packed = torch.cat(chunks, 1).contiguous()  # (E, member_size)
        self._dims = (_L * len(dims))(*dims)
        self._layers = len(dims) - 1

    def __call__(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """``parts`` ((B, D_i) shared by members, or (E, B, D_i)) side by side through the MLP: (E, B, O).

        The result is a view of a (E, B, O padded) buffer.
        """
        args, keep = self._inputs(parts)
        out = torch.empty(self.members, args[1], self._dims[self._layers], dtype=torch.float32)
        if args[1]:
            self.lib.mlp(*args, out.data_ptr(), torch.get_num_threads())
        del keep
        return out[..., :self.out_dim]

    def gaussian_step(self, obs: torch.Tensor, action: torch.Tensor, head: "GaussianHead | None",
                      noise: torch.Tensor | int | None, want_mean: bool = True,
                      out: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """A dynamics step from the MLP's outputs (the state change, then its log-variance):
        ``(mean, draw)``, each (E, B, S), as ``worldmodel.dynamics.FoldedDynamics.sample`` computes them.

        Args:
            obs: (B, S) or (E, B, S) states, the MLP's first input.
            action: (B, A) or (E, B, A).
            head: the log-variance's bounds and scale; None for a deterministic model (draw = mean).
            noise: (E, B, S) standard normal draws; or an integer, the seed of a counter-based stream
                drawn inside the kernel (element (e, b, s) depends on the seed and its index only);
                None for the mean only (draw = mean).
            want_mean: False to skip writing the mean when a draw is made (mean is then None).
            out: where to write the draw (or the mean when none is drawn): an (E, B, S) float32 view
                with unit last stride, such as the previous step's draw; a new tensor if None.
        """
        args, keep = self._inputs([obs, action])
        rows, s = args[1], obs.shape[-1]
        sampled = head is not None and noise is not None
        if self.out_dim < (2 if sampled else 1) * s or (head is not None and any(
                len(t) != s for t in (head.low, head.high, head.log_scale))):
            raise ValueError(f"a step of {s} state dims needs {2 if sampled else 1} x {s} MLP outputs and a "
                             f"head of {s} per field, got {self.out_dim} outputs")
        # Written member-minor, (B, E, S), and returned as (E, B, S) views: a rollout that deals rows
        # to members round-robin (planners.rollout) reads them back in its own order without a copy.
        fresh = lambda: torch.empty(rows, self.members, s, dtype=torch.float32).transpose(0, 1)  # noqa: E731
        if out is not None and not self.fits_step(out, rows, s):
            raise ValueError(f"out must be a float32 ({self.members}, {rows}, {s}) view of a ({rows}, "
                             f"{self.members}, {s}) tensor, got {out.dtype} {tuple(out.shape)} strides {out.stride()}")
        if sampled and isinstance(noise, torch.Tensor) and (
                noise.shape != (self.members, rows, s) or noise.dtype != torch.float32 or noise.stride(-1) != 1):
            raise ValueError(f"noise must be float32 ({self.members}, {rows}, {s}) with unit last stride, got "
                             f"{noise.dtype} {tuple(noise.shape)} strides {noise.stride()}")
        if sampled:
            draw, mean = fresh() if out is None else out, fresh() if want_mean else None
        else:
            draw = mean = fresh() if out is None else out
        if rows:
            z = (noise.data_ptr(), noise.stride(0), noise.stride(1), 0) if isinstance(noise, torch.Tensor) else (
                None, 0, 0, int(noise) % 2**64 if sampled else 0)
            bounds = (head.low.data_ptr(), head.high.data_ptr(), head.log_scale.data_ptr()) if sampled else (None,) * 3
            self.lib.gaussian_step(*args, s, *z, *bounds, None if mean is None else mean.data_ptr(), draw.data_ptr(),
                                   s, self.members * s, torch.get_num_threads())
        del keep
        return mean, draw

    @staticmethod
    def takes(*tensors: torch.Tensor) -> bool:
        """Whether the kernel can read these tensors: CPU float32."""
        return all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)

    def fits_step(self, out: torch.Tensor, rows: int, s: int) -> bool:
        """Whether ``gaussian_step`` can write ``rows`` states of ``s`` dims into ``out``: the (E, B, S) view
        of a (B, E, S) float32 tensor that it returns."""
        return (out.shape == (self.members, rows, s) and out.dtype == torch.float32
                and out.stride() == (s, self.members * s, 1))

    def _inputs(self, parts: list[torch.Tensor]) -> tuple[tuple, list[torch.Tensor]]:
        """The kernel's network and input arguments, and the tensors they point into (kept alive by the caller)."""
        rows = parts[0].shape[-2]
        for p in parts:
            if p.shape[-2] != rows or p.dim() not in (2, 3) or (p.dim() == 3 and p.shape[0] != self.members):
                raise ValueError(f"expected inputs (B, D) or ({self.members}, B, D) with one B, got shapes "
                                 f"{[tuple(p.shape) for p in parts]}")
        if sum(p.shape[-1] for p in parts) != self.in_dim:
            raise ValueError(f"inputs of widths {[p.shape[-1] for p in parts]} do not sum to {self.in_dim}")
        if not self.takes(*parts):
            raise ValueError(f"inputs must be CPU float32 tensors, got {[(p.dtype, p.device.type) for p in parts]}")
        parts = [p if p.stride(-1) == 1 else p.contiguous() for p in parts]
        n = len(parts)
        args = (self.members, rows, n,
                (_P * n)(*[p.data_ptr() for p in parts]),
                (_L * n)(*[p.shape[-1] for p in parts]),
                (_L * n)(*[p.stride(0) if p.dim() == 3 else 0 for p in parts]),
                (_L * n)(*[p.stride(-2) for p in parts]),
                self._layers, self._dims, self.packed.data_ptr(), self.packed.shape[1])
        return args, parts


class GaussianHead:
    """What turns a probabilistic dynamics MLP's log-variance output into a draw: its soft bounds
    ``low`` and ``high`` and ``log_scale``, the log of the calibrated std per unit of exp(logvar / 2);
    (S,) float32 each."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor, log_scale: torch.Tensor) -> None:
        self.low, self.high, self.log_scale = (t.detach().float().contiguous() for t in (low, high, log_scale))
