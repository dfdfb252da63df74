"""Perception encoders: output shapes, image handling and errors."""

from __future__ import annotations

import pytest
import torch

from worldmodel.encoders import CNNEncoder, IdentityEncoder, MLPEncoder, make_encoder


def test_identity_passes_observations_through() -> None:
    obs = torch.randn(4, 6)
    enc = make_encoder("identity", (6,))
    assert isinstance(enc, IdentityEncoder) and enc.out_dim == 6
    assert enc(obs) is obs


def test_mlp_encoder_shape_and_gradients() -> None:
    enc = make_encoder("mlp", (6,), out_dim=16)
    assert isinstance(enc, MLPEncoder) and enc.out_dim == 16
    z = enc(torch.randn(5, 6))
    assert z.shape == (5, 16)
    z.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 46, 48), (4, 84, 84)])
def test_cnn_encoder_shapes(shape: tuple[int, int, int]) -> None:
    enc = make_encoder("cnn", shape, out_dim=32)
    assert isinstance(enc, CNNEncoder)
    assert enc(torch.rand(2, *shape)).shape == (2, 32)


def test_cnn_scales_uint8_pixels_like_floats() -> None:
    enc = CNNEncoder((3, 64, 64), out_dim=8)
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    torch.testing.assert_close(enc(pixels), enc(pixels.float() / 255.0 - 0.5))


def test_encoder_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown encoder 'vit'"):
        make_encoder("vit", (6,))
    with pytest.raises(ValueError, match="vector observations"):
        make_encoder("mlp", (3, 64, 64))
    with pytest.raises(ValueError, match="at least 46x46"):
        CNNEncoder((3, 16, 16))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 64, 64\)"):
        CNNEncoder((3, 64, 64))(torch.rand(2, 3, 32, 32))
