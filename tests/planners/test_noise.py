"""Sampling noise: unit variance at every step, correlated along the horizon as its exponent says, seeded."""

from __future__ import annotations

import pytest
import torch

from planners.noise import coloured_noise


def _lag1(x: torch.Tensor) -> float:
    """Correlation of consecutive horizon steps of (..., H, A) noise."""
    return torch.corrcoef(torch.stack([x[..., :-1, :].flatten(), x[..., 1:, :].flatten()]))[0, 1].item()


@pytest.mark.parametrize("horizon", [7, 30])
def test_coloured_noise_has_unit_variance_at_every_step_and_correlates_more_as_beta_grows(horizon: int) -> None:
    g = torch.Generator().manual_seed(0)
    draws = {beta: coloured_noise((2048, 16, horizon, 2), beta, g, torch.device("cpu")) for beta in (0.0, 1.0, 2.0)}
    for x in draws.values():
        assert x.shape == (2048, 16, horizon, 2)
        torch.testing.assert_close(x.std(dim=(0, 1, 3)), torch.ones(horizon), atol=0.03, rtol=0)
        assert abs(x.mean()) < 0.01
    assert abs(_lag1(draws[0.0])) < 0.02  # white
    assert 0.1 < _lag1(draws[1.0]) < _lag1(draws[2.0])  # pink, then brown: smoother and smoother


def test_noise_is_seeded_and_laid_out_horizon_major() -> None:
    first, second = (coloured_noise((8, 4, 10, 2), 2.0, torch.Generator().manual_seed(5), torch.device("cpu"))
                     for _ in range(2))
    assert torch.equal(first, second)
    assert first.movedim(-2, 0).is_contiguous()  # each step of every sequence is one block
