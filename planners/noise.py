"""Sampling noise for action sequences: white, or coloured along the horizon (iCEM).

Coloured noise with power spectrum 1/f^beta makes sampled sequences smoother and
more temporally correlated (Pinneri et al., 2020); beta = 0 is white noise.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from worldmodel import native


def coloured_noise(shape: tuple[int, ...], beta: float, generator: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """Unit-variance Gaussian noise correlated along the second-to-last axis (the horizon H).

    Laid out horizon-major in memory (an (H, ..., A) tensor seen as (..., H, A)), so sequences built
    from it keep that layout and a rollout reads each step of all of them as one block.

    Args:
        shape: (..., H, A).
        beta: spectral exponent; 0 gives white noise.
    """
    *lead, h, a = shape
    if beta == 0:
        return standard_normal((h, *lead, a), generator, device).movedim(0, -2)
    basis = _colouring(h, float(beta), torch.device(device))  # (H, 2F)
    white = standard_normal((basis.shape[1], math.prod(lead) * a), generator, device)  # (2F, ...*A)
    return (basis @ white).view(h, *lead, a).movedim(0, -2)


def standard_normal(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``torch.randn``, drawn by fleetwm's CPU kernel where it runs (faster, seeded from ``generator`` alike)."""
    if torch.device(device).type == "cpu":
        drawn = native.standard_normal(shape, generator)
        if drawn is not None:
            return drawn
    return torch.randn(shape, generator=generator, device=device)


@lru_cache(maxsize=64)
def _colouring(h: int, beta: float, device: torch.device) -> torch.Tensor:
    """(H, 2F): the linear map irfft makes of white spectra (F real parts, then F imaginary parts, F = H//2 + 1)
    shaped by the amplitude 1/f^(beta/2), scaled so each of the H outputs has unit variance.

    Drawing coloured noise is then one matmul of white noise by this basis, rather than a complex
    spectrum, an inverse FFT and a pass to normalise per call.
    """
    freqs = torch.fft.rfftfreq(h, dtype=torch.float64)  # (F,)
    freqs[0] = freqs[1] if h > 1 else 1.0  # no infinite power at f = 0
    spectra = torch.diag(freqs.pow(-beta / 2)).to(torch.complex128)  # (F, F): one shaped frequency per row
    basis = torch.cat([torch.fft.irfft(spectra, n=h), torch.fft.irfft(1j * spectra, n=h)])  # (2F, H)
    # The noise is stationary along H: every output has variance sum_j basis[j, t]^2.
    basis = basis / basis.square().sum(0).mean().sqrt()
    return basis.T.contiguous().to(device=device, dtype=torch.float32)
