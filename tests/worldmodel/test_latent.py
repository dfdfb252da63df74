"""The latent world model from pixels: shapes, a vectorised ensemble whose members differ, a stop-gradient
consistency target, a loss that training lowers, and the episodes it trains on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldmodel.envs.collect import collect
from worldmodel.latent import LatentConfig, LatentDynamics, LatentWorldModel, simnorm
from worldmodel.latent_training import (Episodes, LatentTrainConfig, collect_episodes, episodes_from_logs,
                                        frame_stacks, latent_loss, sample_batch, train_latent)

SMALL = LatentConfig(image_shape=(32, 32, 3), latent=16, simnorm_group=4, members=3, hidden=32, depth=8)
SMALL_ENV = {"image_size": 32}


@pytest.fixture(scope="module")
def episodes() -> tuple[Episodes, np.ndarray]:
    return collect_episodes(4, seed=3, steps=20, env_kwargs=SMALL_ENV)


def model(seed: int = 0) -> LatentWorldModel:
    torch.manual_seed(seed)
    return LatentWorldModel(SMALL)


def test_shapes_of_every_part() -> None:
    m, b = model(), 5
    stacks = torch.randint(0, 256, (b, SMALL.frames, 32, 32, 3), dtype=torch.uint8)
    z = m.encode(stacks)
    assert z.shape == (b, SMALL.state_dim)
    # SimNorm: every group of the latent is a probability vector.
    groups = SMALL.latent // SMALL.simnorm_group  # the normalised part's groups
    norm = z[:, SMALL.points:SMALL.moving]
    assert torch.allclose(norm.reshape(b, groups, -1).sum(-1), torch.ones(b, groups))
    nxt = m.next(z, torch.zeros(b, 2))
    assert nxt.shape == (SMALL.members, b, SMALL.state_dim)
    assert m.reward(nxt).shape == (SMALL.members, b) and m.breach_logit(nxt).shape == (SMALL.members, b)
    assert m.disagreement(nxt).shape == (b,)
    with pytest.raises(ValueError, match="frame stacks"):
        m.encode(stacks[:, :2])


def test_members_differ_and_each_reads_only_its_own_rows() -> None:
    m, z, a = model(), torch.softmax(torch.randn(6, SMALL.state_dim), -1), torch.randn(6, 2)
    nxt = m.next(z, a)  # (E, B, Z): shared inputs
    assert all(not torch.allclose(nxt[0], nxt[e]) for e in range(1, SMALL.members))
    assert (m.disagreement(nxt) > 0).all()
    # The ensemble is one batched program: weights stacked by member, and member e's output depends on
    # member e's input rows alone.
    assert m.dynamics.net[0].weight.shape[0] == SMALL.members
    per_member = z.expand(SMALL.members, -1, -1).clone()
    per_member[1] = torch.softmax(torch.randn(6, SMALL.state_dim), -1)
    moved = m.next(per_member, a)
    assert torch.equal(moved[0], nxt[0]) and torch.equal(moved[2], nxt[2]) and not torch.allclose(moved[1], nxt[1])


def test_the_planners_view_is_a_deterministic_ensemble_over_the_moving_part() -> None:
    dyn, z = LatentDynamics(model()), torch.softmax(torch.randn(4, SMALL.state_dim), -1)
    m, a = SMALL.moving, torch.randn(4, 2)
    pred = dyn(z[:, :m], a)
    assert pred.mean.shape == (SMALL.members, 4, m) and (pred.var == 0).all()
    assert torch.equal(pred.mean, dyn.model.next(z, a)[..., :m])  # the whole latent's step, less the map
    assert dyn.obs_dim == m and torch.equal(dyn.delta_norm.std, dyn.model.step_std[:m])


def test_simnorm_is_a_softmax_per_group() -> None:
    x = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert torch.allclose(simnorm(x, 2), torch.full((1, 4), 0.5))


def test_frame_stacks_repeat_the_first_frame_before_the_start() -> None:
    frames = np.arange(2 * 4).reshape(2, 4, 1, 1, 1).astype(np.uint8)  # (Ep, T+1, 1, 1, 1): frame value = index
    stacks = frame_stacks(frames, np.array([0, 1]), np.array([0, 3]), 3)[..., 0, 0, 0]
    assert stacks.tolist() == [[0, 0, 0], [5, 6, 7]]


def test_collected_episodes_carry_the_breach_flag_and_keep_states_apart(episodes) -> None:
    data, states = episodes
    assert data.frames.shape == (4, 21, 32, 32, 3) and states.shape == (4, 21, 6)
    valid = data.valid()
    dist = np.linalg.norm(states[:, 1:, :2] - states[:, 1:, 4:6], axis=-1)
    assert np.allclose(data.rewards[valid], -dist[valid], atol=1e-4)  # the reward of arriving at frame t+1
    assert data.breach.dtype == np.float32 and np.isin(data.breach[valid], (0.0, 1.0)).all()


def test_held_random_actions_repeat_in_blocks() -> None:
    data, _ = collect_episodes(2, seed=1, steps=7, env_kwargs=SMALL_ENV, hold=3)
    a = data.actions
    assert (a[:, 0] == a[:, 2]).all() and (a[:, 3] == a[:, 5]).all() and (a[:, 2] != a[:, 3]).all()
    with pytest.raises(ValueError, match="hold"):
        collect_episodes(1, hold=0)


def test_episodes_from_logs_match_the_rows() -> None:
    rows = collect("PixelNav2D-v0", episodes=2, seed=0, env_kwargs=SMALL_ENV, num_envs=2)
    data = episodes_from_logs(rows)
    assert data.lengths.sum() == len(rows)
    valid = data.valid()
    assert np.array_equal(data.frames[:, :-1][valid], rows.obs_image)
    assert np.array_equal(data.frames[:, 1:][valid], rows.new_obs_image)
    assert np.array_equal(data.actions[valid], rows.rows.actions)
    assert np.array_equal(data.breach[valid], rows.rows.violations) and np.isnan(data.breach[~valid]).all()


def test_the_consistency_target_is_stop_gradient(episodes) -> None:
    m, seen = model(), []
    encode = m.encode
    m.encode = lambda stacks: seen.append(encode(stacks)) or seen[-1]  # record each call's output
    batch = sample_batch(episodes[0], SMALL.frames, 4, 3, np.random.default_rng(0))
    latent_loss(m, batch, LatentTrainConfig(horizon=3))
    assert len(seen) == 2 and seen[0].requires_grad and not seen[1].requires_grad
    assert seen[1].shape == (3 * 4, SMALL.state_dim)  # the L later stacks, encoded together


def test_training_lowers_the_loss_on_a_fixed_batch(episodes) -> None:
    m, cfg = model(), LatentTrainConfig(horizon=2, lr=3e-3)
    batch = sample_batch(episodes[0], SMALL.frames, 16, 2, np.random.default_rng(0))
    with torch.no_grad():
        m.reward_norm.fit(batch.rewards.reshape(-1, 1))
    optimiser = torch.optim.Adam(m.parameters(), lr=cfg.lr)
    with torch.no_grad():
        before = latent_loss(m, batch, cfg)[0].item()
    for _ in range(30):
        loss, _ = latent_loss(m, batch, cfg)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        assert latent_loss(m, batch, cfg)[0].item() < 0.8 * before


def test_train_latent_reports_and_sets_the_step_scale(episodes) -> None:
    m, logged = model(), []
    report = train_latent(m, episodes[0], LatentTrainConfig(steps=4, batch=4, horizon=2),
                          on_log=lambda *args: logged.append(args), log_every=2)
    assert report.steps == 4 and report.cpu_seconds > 0 and [s for s, *_ in logged] == [2, 4]
    assert not torch.equal(m.step_std, torch.ones(SMALL.state_dim)) and not m.training
    with pytest.raises(ValueError, match="horizon"):
        LatentTrainConfig(horizon=0)
