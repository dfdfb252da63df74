"""The training pipeline: episode splits, sequence windows, metrics and seeded repeatability."""

from __future__ import annotations

import numpy as np
import torch

from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.data.batch import Transitions
from worldmodel.envs import make_env, space_spec
from worldmodel.metrics import fmt_metric, regression_metrics
from worldmodel.splits import split_by_episode
from worldmodel.training import sequence_windows, train_world_model

from .conftest import TINY_MODEL


def test_split_keeps_episodes_whole(nav_data: Transitions) -> None:
    split = split_by_episode(nav_data, 0.2, 0.2, seed=0)
    sets = [set(part.eps_id) for part in (split.train, split.val, split.test)]
    assert all(sets) and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(map(len, (split.train, split.val, split.test))) == len(nav_data)


def test_sequence_windows_are_consecutive_steps_of_one_episode(nav_data: Transitions) -> None:
    index = sequence_windows(nav_data, 16)
    assert index.shape[1] == 16 and len(index) > 0
    eps, t = nav_data.eps_id[index], nav_data.t[index]
    assert (eps == eps[:, :1]).all()
    assert (np.diff(t, axis=1) == 1).all()
    np.testing.assert_array_equal(nav_data.obs[index[:, 1:]], nav_data.new_obs[index[:, :-1]])


def test_training_is_seeded_and_repeatable(nav_data: Transitions) -> None:
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    small = TrainConfig(epochs=2, patience=2)
    a = train_world_model(nav_data, spec, TINY_MODEL, small)
    b = train_world_model(nav_data, spec, TINY_MODEL, small)
    for (ka, va), (kb, vb) in zip(a.dynamics.state_dict().items(), b.dynamics.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert a.metrics["dynamics"]["mse"] == b.metrics["dynamics"]["mse"]


def test_metrics_report_every_dimension(tiny_model) -> None:
    dyn = tiny_model.metrics["dynamics"]
    assert len(dyn["r2"]) == len(dyn["r2_delta"]) == len(dyn["coverage_2sigma"]) == 6
    # The goal never moves within an episode: its change has no variance, so no R^2 of the change.
    assert dyn["r2_delta"][4] is None and dyn["r2_delta"][5] is None
    assert tiny_model.metrics["termination"] is None or "accuracy" in tiny_model.metrics["termination"]


def test_recurrent_and_deterministic_kinds_train_through_the_pipeline(nav_data: Transitions) -> None:
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    for kind, members in (("gru", 1), ("mlp", 1)):
        cfg = ModelConfig(dynamics=kind, ensemble_size=members, hidden=16, layers=1, reward_hidden=16,
                          reward_layers=1)
        model = train_world_model(nav_data, spec, cfg, TrainConfig(epochs=2, patience=2))
        assert len(model.metrics["dynamics"]["r2"]) == 6


def test_regression_metrics_known_values() -> None:
    target = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    perfect = regression_metrics(target, target, torch.ones_like(target))
    assert perfect["r2"] == [1.0] and perfect["coverage_1sigma"] == [1.0]
    mean_only = regression_metrics(torch.full_like(target, 1.5), target)
    assert mean_only["r2"] == [0.0]
    # Standard normal errors with unit predicted variance: about 68% / 95% coverage.
    g = torch.Generator().manual_seed(0)
    y = torch.randn(20000, 2, generator=g)
    cal = regression_metrics(torch.zeros_like(y), y, torch.ones_like(y))
    assert abs(cal["coverage_1sigma_mean"] - 0.683) < 0.01 and abs(cal["coverage_2sigma_mean"] - 0.954) < 0.01


def test_default_model_is_the_fleet_serving_size() -> None:
    # The size the README's Nav2D and fleet results use; `wm mbrl` has its own (planners.config.PETS_MODEL).
    cfg = ModelConfig()
    assert (cfg.ensemble_size, cfg.hidden, cfg.layers, cfg.reward_hidden, cfg.reward_layers) == (5, 64, 2, 64, 2)


def test_config_activation_names_are_the_ones_nn_builds() -> None:
    from worldmodel import config, nn

    assert set(config.ACTIVATIONS) == set(nn.ACTIVATIONS)


def test_constant_reward_trains_and_logs_r2_as_n_a(nav_data: Transitions) -> None:
    # R^2 of a constant target is undefined (None); the training log prints it, not a TypeError.
    import dataclasses

    data = dataclasses.replace(nav_data, rewards=np.ones_like(nav_data.rewards))
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    lines: list[str] = []
    model = train_world_model(data, spec, TINY_MODEL, TrainConfig(epochs=1, device="cpu"), log=lines.append)
    assert model.metrics["reward"]["r2_min"] is None
    assert any(line.startswith("reward:") and line.endswith("test R^2 n/a") for line in lines), lines
    # One line for the split, then one per stage, in the order they are fitted.
    assert [line.split(":")[0] for line in lines[1:]] == ["dynamics", "reward", "termination"], lines


def test_fmt_metric_prints_an_undefined_metric_as_n_a() -> None:
    assert fmt_metric(None) == "n/a" and fmt_metric(0.123456) == "0.1235" and fmt_metric(-2.0) == "-2.0000"
