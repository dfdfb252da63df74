"""Sampling noise for action sequences: white, or coloured along the horizon (iCEM).

Coloured noise with power spectrum 1/f^beta makes sampled sequences smoother and
more temporally correlated (Pinneri et al., 2020); beta = 0 is white noise.
"""

from __future__ import annotations

import torch


def coloured_noise(shape: tuple[int, ...], beta: float, generator: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """Unit-variance Gaussian noise correlated along the second-to-last axis (the horizon H).

    Args:
        shape: (..., H, A).
        beta: spectral exponent; 0 gives white noise.
    """
    if beta == 0:
        return torch.randn(shape, generator=generator, device=device)
    *lead, h, a = shape
    freqs = torch.fft.rfftfreq(h, device=device)  # (F,)
    freqs[0] = freqs[1] if h > 1 else 1.0  # no infinite power at f = 0
    amplitude = freqs.pow(-beta / 2)  # (F,)
    spec_shape = (*lead, a, len(freqs))
    real = torch.randn(spec_shape, generator=generator, device=device)
    imag = torch.randn(spec_shape, generator=generator, device=device)
    signal = torch.fft.irfft((real + 1j * imag) * amplitude, n=h)  # (..., A, H)
    # Normalise over the whole batch, not per sequence, so slow (low-frequency) drifts survive.
    return (signal / signal.std().clamp_min(1e-6)).transpose(-1, -2)
