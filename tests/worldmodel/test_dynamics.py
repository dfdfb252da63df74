"""Dynamics models on toy linear systems with known answers, and the ensemble's vectorisation."""

from __future__ import annotations

import torch
from torch import nn

from worldmodel.config import TrainConfig
from worldmodel.dynamics import DeterministicDynamics, ProbabilisticEnsemble
from worldmodel.fit import fit
from worldmodel.metrics import regression_metrics
from worldmodel.nn import EnsembleLinear
from worldmodel.recurrent import RecurrentDynamics

# A damped double integrator, x' = A x + B u, with S=2, A=1.
A_MAT = torch.tensor([[1.0, 0.1], [-0.05, 0.95]])
B_MAT = torch.tensor([[0.0], [0.1]])
FAST = TrainConfig(epochs=60, batch_size=128, lr=3e-3, patience=60, seed=0)


def linear_data(n: int, seed: int, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    u = torch.rand(n, 1, generator=g) * 2 - 1
    x_next = x @ A_MAT.T + u @ B_MAT.T + noise * torch.randn(n, 2, generator=g)
    return x, u, x_next


def train_on_linear(model: nn.Module, noise: float = 0.0) -> dict:
    train, val, test = linear_data(2000, 0, noise), linear_data(400, 1, noise), linear_data(1000, 2, noise)
    model.fit_normalizers(*train)
    fit(model, train, val, FAST)
    with torch.no_grad():
        mean, var = model(test[0], test[1]).moments()
    return regression_metrics(mean, test[2], var, base=test[0])


def test_deterministic_mlp_learns_linear_system() -> None:
    torch.manual_seed(0)
    metrics = train_on_linear(DeterministicDynamics(2, 1, members=1, hidden=64, layers=2))
    assert metrics["r2_delta_min"] > 0.99, metrics


def test_probabilistic_ensemble_learns_mean_and_noise_level() -> None:
    torch.manual_seed(0)
    noise = 0.05
    model = ProbabilisticEnsemble(2, 1, members=3, hidden=64, layers=2)
    metrics = train_on_linear(model, noise)
    # Error down to the noise floor, and the predicted variance close to the true noise variance.
    assert max(metrics["mse"]) < 1.3 * noise**2, metrics
    with torch.no_grad():
        x, u, _ = linear_data(500, 3)
        sigma = model(x, u).var.mean().sqrt().item()
    assert 0.7 * noise < sigma < 1.4 * noise
    assert 0.9 < metrics["coverage_2sigma_mean"] < 0.99


def test_recurrent_model_infers_hidden_velocity() -> None:
    """Only position is observed; predicting the next position needs the velocity, i.e. memory."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    w, length = 600, 12
    x = torch.randn(w, 2, generator=g)
    u = torch.rand(w, length, 1, generator=g) * 2 - 1
    states = []
    for t in range(length + 1):
        states.append(x)
        if t < length:
            x = x @ A_MAT.T + u[:, t] @ B_MAT.T
    pos = torch.stack(states, 1)[..., :1]  # (W, L+1, 1) observed position only
    obs, nxt = pos[:, :-1], pos[:, 1:]
    model = RecurrentDynamics(1, 1, hidden=64, members=1)
    model.fit_normalizers(obs, u, nxt)
    cut = 500
    fit(model, (obs[:cut], u[:cut], nxt[:cut]), (obs[cut:], u[cut:], nxt[cut:]),
        TrainConfig(epochs=150, batch_size=64, lr=3e-3, patience=150))
    with torch.no_grad():
        h = model.initial_state(w - cut)
        errors, deltas = [], []
        for t in range(length):
            h, pred = model.step(h, obs[cut:, t], u[cut:, t])
            if t >= 4:  # after a short burn-in the GRU has seen enough to know the velocity
                errors.append(pred.mean[0] - nxt[cut:, t])
                deltas.append(nxt[cut:, t] - obs[cut:, t])
    errors, deltas = torch.cat(errors), torch.cat(deltas)
    r2_delta = 1 - errors.square().sum() / (deltas - deltas.mean()).square().sum()
    assert r2_delta > 0.95, r2_delta


def test_ensemble_vectorisation_equals_member_loop() -> None:
    torch.manual_seed(0)
    model = ProbabilisticEnsemble(3, 2, members=4, hidden=16, layers=2)
    model.fit_normalizers(torch.randn(50, 3), torch.randn(50, 2), torch.randn(50, 3))
    obs, act = torch.randn(7, 3), torch.randn(7, 2)
    with torch.no_grad():
        batched = model._raw(obs, act)  # (E, B, 2S)
        x = model.in_norm(torch.cat([obs, act], -1))
        for e in range(model.members):
            h = x
            for layer in model.net.net:
                h = h @ layer.weight[e] + layer.bias[e, 0] if isinstance(layer, EnsembleLinear) else layer(h)
            torch.testing.assert_close(batched[e], h)


def test_members_see_different_bootstrap_rows_and_disagree_off_data() -> None:
    torch.manual_seed(0)
    model = ProbabilisticEnsemble(2, 1, members=5, hidden=32, layers=2)
    train_on_linear(model, noise=0.05)
    with torch.no_grad():
        near = model(*linear_data(200, 4)[:2]).mean.var(0).mean()
        far = model(10 * torch.randn(200, 2), torch.rand(200, 1)).mean.var(0).mean()
    assert far > 10 * near


def test_predicted_shapes_and_batched_member_inputs() -> None:
    model = ProbabilisticEnsemble(4, 2, members=3, hidden=8, layers=1)
    pred = model(torch.randn(5, 4), torch.randn(5, 2))
    assert pred.mean.shape == pred.var.shape == (3, 5, 4)
    pred = model(torch.randn(3, 5, 4), torch.randn(3, 5, 2))
    assert pred.mean.shape == (3, 5, 4)
    assert (pred.var > 0).all()
    assert (DeterministicDynamics(4, 2)(torch.randn(5, 4), torch.randn(5, 2)).var == 0).all()


def _fitted(model: nn.Module, seed: int = 0) -> nn.Module:
    """A model with non-trivial normalisers and calibration, so folding them has something to fold."""
    g = torch.Generator().manual_seed(seed)
    s, a = model.obs_dim, model.act_dim
    model.fit_normalizers(3 * torch.randn(64, s, generator=g) + 1, torch.rand(64, a, generator=g),
                          0.2 * torch.randn(64, s, generator=g) - 0.5)
    model.var_scale.uniform_(0.5, 2.0, generator=g)
    return model


def test_folded_dynamics_predicts_what_the_module_predicts() -> None:
    torch.manual_seed(0)
    for model in (ProbabilisticEnsemble(4, 2, members=3, hidden=16, layers=2),
                  DeterministicDynamics(4, 2, members=2, hidden=16, layers=2, activation="silu")):
        model = _fitted(model)
        obs, act = torch.randn(model.members, 9, 4), torch.randn(model.members, 9, 2)
        noise = torch.randn(model.members, 9, 4)
        folded = model.folded()
        with torch.no_grad():
            pred = model(obs, act)
            mean, draw = folded.sample(obs, act, noise)
            torch.testing.assert_close(folded.mean(obs[0], act[0]), model(obs[0], act[0]).mean)
        torch.testing.assert_close(mean, pred.mean)
        torch.testing.assert_close(draw, pred.sample(noise))


def test_folded_dynamics_passes_gradients_to_actions() -> None:
    model = _fitted(ProbabilisticEnsemble(4, 2, members=3, hidden=16, layers=2))
    obs, act = torch.randn(5, 4), torch.randn(5, 2, requires_grad=True)
    model.folded().mean(obs, act).square().sum().backward()
    act2 = act.detach().requires_grad_()
    model(obs, act2).mean.square().sum().backward()
    torch.testing.assert_close(act.grad, act2.grad)


def test_folded_form_follows_weight_updates() -> None:
    model = _fitted(ProbabilisticEnsemble(4, 2, members=3, hidden=16, layers=2))
    obs, act = torch.randn(5, 4), torch.randn(5, 2)
    assert model.folded() is model.folded()  # cached while nothing changes
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.loss(obs.expand(3, 5, 4), act.expand(3, 5, 2), obs.expand(3, 5, 4)).sum().backward()
    opt.step()
    with torch.no_grad():
        torch.testing.assert_close(model.folded().mean(obs, act), model(obs, act).mean)
        other = _fitted(ProbabilisticEnsemble(4, 2, members=3, hidden=16, layers=2), seed=1)
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model.folded().mean(obs, act), other(obs, act).mean)
