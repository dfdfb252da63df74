"""A recurrent latent model: the filter's update lies between prediction and encoding, its sequences' loss
trains the gain and the window's encoder through time, and the burn-in's frames train no encoder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from worldmodel.latent import LatentConfig, LatentWorldModel
from worldmodel.latent_training import (Episodes, LatentTrainConfig, collect_episodes, filter_loss, loss_for,
                                        sample_batch, sample_for, train_latent)

FILTERED = LatentConfig(image_shape=(32, 32, 3), frames=2, latent=16, simnorm_group=4, members=3, hidden=32, depth=8,
                        recurrent=True)
SEQUENCES = LatentTrainConfig(sequences=4, window=5, burn_in=3, horizon=2, lr=3e-3)


@pytest.fixture(scope="module")
def episodes() -> Episodes:
    return collect_episodes(4, seed=5, steps=24, env_kwargs={"image_size": 32}, hold=4)[0]


def model(cfg: LatentConfig = FILTERED, seed: int = 0) -> LatentWorldModel:
    torch.manual_seed(seed)
    return LatentWorldModel(cfg).eval()


def stacks(b: int, cfg: LatentConfig = FILTERED) -> torch.Tensor:
    return torch.randint(0, 256, (b, cfg.frames, *cfg.image_shape), dtype=torch.uint8)


def test_the_filter_is_an_alpha_beta_filter_on_keypoints_and_a_blend_elsewhere() -> None:
    m, now, later = model(), stacks(3), stacks(3)
    z, a = m.encode(now), torch.rand(3, 2) * 2 - 1
    k2, p, m_ = 2 * FILTERED.keypoints, FILTERED.points, FILTERED.moving
    with torch.no_grad():
        prior, seen = m.next(z, a).mean(0), m.encode(later)
        m.gain_logit.fill_(-30.0)  # a gain of 0 keeps the prediction
        assert torch.allclose(m.filter(z, a, later), prior, atol=1e-5)
        m.gain_logit.fill_(30.0)  # a gain of 1: the new frame's keypoints and the rest of the encoding ...
        out = m.filter(z, a, later)
        assert torch.allclose(out[:, k2:], seen[:, k2:], atol=1e-5)
        assert torch.allclose(out[:, :k2], prior[:, :k2], atol=1e-5)  # ... the older frame's as predicted
        m.gain_logit.copy_(torch.linspace(-3, 3, FILTERED.state_dim))
        out = m.filter(z, a, later)
    gain = torch.sigmoid(m.gain_logit)
    innovation = seen[:, k2:p] - prior[:, k2:p]  # the new frame's keypoints only: the older one was seen before
    position = prior[:, k2:p] + gain[k2:p] * innovation
    change = prior[:, k2:p] - prior[:, :k2] + gain[:k2] * innovation
    assert torch.allclose(out[:, k2:p], position, atol=1e-5)
    assert torch.allclose(out[:, :k2], position - change, atol=1e-5)
    mixed = prior + gain * (seen - prior)
    assert torch.allclose(out[:, m_:], mixed[:, m_:], atol=1e-6)  # the zone map: between the two, per entry
    # the normalised part: the same mix, each SimNorm group rescaled to sum to 1 again
    groups = out[:, p:m_].reshape(3, -1, FILTERED.simnorm_group)
    raw = mixed[:, p:m_].reshape(groups.shape)
    assert torch.allclose(groups, raw / raw.sum(-1, keepdim=True), atol=1e-6)
    assert torch.allclose(groups.sum(-1), torch.ones(groups.shape[:2]), atol=1e-6)


def test_velocity_gains_start_small() -> None:
    gain = torch.sigmoid(model().gain_logit)
    assert (gain[:2 * FILTERED.keypoints] < 0.15).all() and torch.allclose(gain[2 * FILTERED.keypoints:],
                                                                         torch.tensor(0.5))
    with pytest.raises(ValueError, match="2 frames"):
        dataclasses.replace(FILTERED, frames=3)


def test_only_recurrent_models_filter() -> None:
    plain = model(dataclasses.replace(FILTERED, recurrent=False))
    assert not hasattr(plain, "gain_logit")  # a frame-stack model's weights are as before: old artifacts load
    with pytest.raises(ValueError, match="recurrent"):
        plain.filter(plain.encode(stacks(2)), torch.zeros(2, 2), stacks(2))


def test_sequences_start_episodes_and_cover_burn_in_window_and_rollouts(episodes) -> None:
    m = model()
    b = sample_for(m, episodes, SEQUENCES, np.random.default_rng(0))
    length = SEQUENCES.burn_in + SEQUENCES.window + SEQUENCES.horizon  # stacks per sequence
    assert b.stacks.shape[:2] == (length, SEQUENCES.sequences) and b.actions.shape[:2] == (length - 1, 4)
    # Starts drawn from burn_in steps before each episode and moved to its start: (burn_in + 1) / (length +
    # burn_in) of them start it (4 / 27 here), against 1 / length without.
    many = sample_batch(episodes, 2, 4000, 1, np.random.default_rng(1), before=SEQUENCES.burn_in)
    assert abs(many.first.float().mean().item() - 4 / 27) < 0.03
    assert abs(sample_batch(episodes, 2, 4000, 1, np.random.default_rng(1)).first.float().mean().item() - 1 / 24) < 0.02


def test_the_burn_in_and_the_targets_are_encoded_without_gradient(episodes) -> None:
    m, seen = model(), []
    encode = m.encode
    m.encode = lambda s: seen.append(encode(s)) or seen[-1]  # type: ignore[method-assign]
    filter_loss(m, sample_for(m, episodes, SEQUENCES, np.random.default_rng(0)), SEQUENCES)
    grads = [x.requires_grad for x in seen]
    sizes = [len(x) // SEQUENCES.sequences for x in seen]
    assert sorted(zip(sizes, grads)) == sorted([(SEQUENCES.burn_in, False), (SEQUENCES.horizon, False),
                                                (SEQUENCES.window, True)])


def test_training_on_sequences_lowers_the_loss_and_moves_the_gain(episodes) -> None:
    m = model().train()
    batch = sample_for(m, episodes, SEQUENCES, np.random.default_rng(0))
    with torch.no_grad():
        m.reward_norm.fit(batch.rewards.reshape(-1, 1))
        before = filter_loss(m, batch, SEQUENCES)[0].item()
    optimiser = torch.optim.Adam(m.parameters(), lr=SEQUENCES.lr)
    initial = m.gain_logit.detach().clone()
    for _ in range(30):
        loss, parts = loss_for(m, batch, SEQUENCES)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert set(parts) == {"consistency", "reward", "breach"}
    assert (m.gain_logit.detach() - initial).abs().max() > 1e-3  # the gain learns through time
    with torch.no_grad():
        assert filter_loss(m, batch, SEQUENCES)[0].item() < 0.8 * before


def test_train_latent_runs_a_recurrent_model(episodes) -> None:
    m = model()
    report = train_latent(m, episodes, dataclasses.replace(SEQUENCES, steps=3))
    assert report.steps == 3 and not m.training and set(report.losses) == {"consistency", "reward", "breach"}
