"""GRU ensembles: the batched cell against torch's, old one-member checkpoints, and a partially observed toy."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from worldmodel.artifact import load_model, save_model
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.data.batch import Transitions
from worldmodel.envs import make_env, space_spec
from worldmodel.evaluation import evaluate
from worldmodel.evaluation_config import EvalConfig
from worldmodel.fit import fit
from worldmodel.nn import Normalizer
from worldmodel.recurrent import EnsembleGRUCell, RecurrentDynamics
from worldmodel.training import train_world_model


def test_batched_cell_equals_separate_grucells() -> None:
    torch.manual_seed(0)
    e, b, i, hd = 3, 7, 4, 5
    cells = [nn.GRUCell(i, hd) for _ in range(e)]
    batched = EnsembleGRUCell(e, i, hd)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh"):
            getattr(batched, name).copy_(torch.stack([getattr(c, name).t() for c in cells]))
        for name in ("bias_ih", "bias_hh"):
            getattr(batched, name).copy_(torch.stack([getattr(c, name)[None] for c in cells]))
    x, h = torch.randn(e, b, i), torch.randn(e, b, hd)
    expected = torch.stack([cell(x[k], h[k]) for k, cell in enumerate(cells)])
    torch.testing.assert_close(batched(x, h), expected)


def test_the_default_members_are_the_vector_ensembles() -> None:
    assert RecurrentDynamics(2, 1, hidden=4).members == ModelConfig().ensemble_size
    assert ModelConfig(dynamics="gru", ensemble_size=3).ensemble_size == 3


class _SingleGRU(nn.Module):
    """The one-member GRU dynamics' layout before ensembles: torch layers, (O, I) weights."""

    def __init__(self, s: int, a: int, hd: int) -> None:
        super().__init__()
        self.in_norm, self.delta_norm = Normalizer(s + a), Normalizer(s)
        self.embed = nn.Sequential(nn.Linear(s + a, hd), nn.SiLU())
        self.cell = nn.GRUCell(hd, hd)
        self.head = nn.Sequential(nn.Linear(hd, hd), nn.SiLU(), nn.Linear(hd, 2 * s))
        self.max_logvar = nn.Parameter(torch.full((s,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((s,), -10.0))
        self.register_buffer("var_scale", torch.ones(s))


def test_a_one_member_checkpoint_saved_before_ensembles_loads() -> None:
    torch.manual_seed(0)
    old = _SingleGRU(3, 2, 8)
    with torch.no_grad():
        old.delta_norm.std.fill_(0.5)
    model = RecurrentDynamics(3, 2, hidden=8, members=1)
    model.load_state_dict(old.state_dict())
    obs, act, h = torch.randn(4, 3), torch.randn(4, 2), torch.randn(4, 8)
    with torch.no_grad():
        new_h, pred = model.step(h, obs, act)
        h_ref = old.cell(old.embed(old.in_norm(torch.cat([obs, act], -1))), h)
        mean_n = old.head(h_ref)[:, :3]
    torch.testing.assert_close(new_h, h_ref)
    torch.testing.assert_close(pred.mean[0], obs + old.delta_norm.inverse(mean_n))


def test_flat_hidden_state_holds_each_member_and_shared_obs_equals_per_member_obs() -> None:
    torch.manual_seed(0)
    model = RecurrentDynamics(3, 2, hidden=4, members=2)
    h = torch.randn(5, 8)
    assert torch.equal(model.join(model.split(h)), h)
    assert torch.equal(model.split(h)[1, 2], h[2, 4:])  # member-major within an agent's row
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    with torch.no_grad():
        shared_h, shared = model.step(h, obs, act)
        own_h, own = model.step(h, obs.expand(2, 5, 3), act.expand(2, 5, 2))
    assert shared.mean.shape == (2, 5, 3) and shared_h.shape == (5, 8)
    torch.testing.assert_close(shared.mean, own.mean)
    torch.testing.assert_close(shared_h, own_h)


def _position_only(windows: int, length: int, seed: int, scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    """A unit-mass cart seen by its position alone: predicting the next position needs the velocity,
    which only the history tells. Returns obs, actions, next obs: (W, L, 1) each."""
    g = torch.Generator().manual_seed(seed)
    pos, vel = scale * torch.randn(windows, generator=g), scale * torch.randn(windows, generator=g)
    u = scale * (torch.rand(windows, length, generator=g) * 2 - 1)
    trace = [pos]
    for t in range(length):
        vel = 0.9 * vel + 0.1 * u[:, t]
        pos = pos + 0.1 * vel
        trace.append(pos)
    x = torch.stack(trace, 1)[..., None]  # (W, L+1, 1)
    return x[:, :-1], u[..., None], x[:, 1:]


def test_two_gru_members_learn_a_partially_observed_toy_and_disagree_off_the_data() -> None:
    torch.manual_seed(0)
    obs, act, nxt = _position_only(400, 10, seed=0)
    model = RecurrentDynamics(1, 1, hidden=24, members=2)
    model.fit_normalizers(obs, act, nxt)
    fit(model, (obs[:340], act[:340], nxt[:340]), (obs[340:], act[340:], nxt[340:]),
        TrainConfig(epochs=50, batch_size=48, lr=5e-3, patience=50))

    def rollout(o: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced means (E, W, L, 1) and each step's disagreement (W, L)."""
        h, means = model.initial_state(len(o)), []
        with torch.no_grad():
            for t in range(o.shape[1]):
                h, pred = model.step(h, o[:, t], a[:, t])
                means.append(pred.mean)
        means = torch.stack(means, 2)
        return means, (means.var(0, unbiased=False) / model.delta_norm.std.square()).mean(-1)

    o, a, n = _position_only(200, 10, seed=1)  # held-out windows of the same system
    means, on_data = rollout(o, a)
    error, delta = (means.mean(0) - n)[:, 3:], (n - o)[:, 3:]  # after a short burn-in
    r2 = 1 - error.square().sum() / (delta - delta.mean()).square().sum()
    assert r2 > 0.9, r2
    _, off_data = rollout(*_position_only(200, 10, seed=2, scale=6.0)[:2])  # speeds and pushes never seen
    assert off_data.mean() > 5 * on_data.mean(), (off_data.mean(), on_data.mean())


def test_a_gru_ensemble_trains_saves_loads_and_scores_through_the_pipeline(nav_data: Transitions,
                                                                            tmp_path: Path) -> None:
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    cfg = ModelConfig(dynamics="gru", ensemble_size=2, hidden=16, layers=1, reward_hidden=16, reward_layers=1)
    model = train_world_model(nav_data, spec, cfg, TrainConfig(epochs=2, patience=2, seq_len=8))
    assert model.dynamics.members == 2 and model.metrics["dynamics"]["coverage_2sigma_mean"] is not None
    loaded = load_model(save_model(model, tmp_path / "gru"))
    assert loaded.dynamics.members == 2
    h, obs, act = torch.randn(3, 32), torch.as_tensor(nav_data.obs[:3]), torch.as_tensor(nav_data.actions[:3])
    with torch.no_grad():
        torch.testing.assert_close(loaded.dynamics.step(h, obs, act)[1].mean, model.dynamics.step(h, obs, act)[1].mean)
    scored = evaluate(loaded, nav_data, EvalConfig(horizon=3))
    assert len(scored.by_horizon) == 3 and scored.by_horizon[-1].coverage_2sigma is not None
