"""MC-dropout dynamics: members are dropout masks of one net, behind the ensemble's interface."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import torch

from planners import PlanConfig, make_planner
from tests.thread_fixtures import one_thread  # noqa: F401  (autouse: one torch thread)
from worldmodel.artifact import load_model, save_model
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.data.batch import Transitions
from worldmodel.dynamics import Prediction
from worldmodel.envs import make_env, space_spec
from worldmodel.fit import fit
from worldmodel.mc_dropout import FoldedMCDropout, MCDropoutDynamics
from worldmodel.metrics import regression_metrics
from worldmodel.model import build_dynamics
from worldmodel.training import train_world_model

from ..planners.toys import B_MAT, optimal_first_action, quadratic_objective
from .conftest import TINY_MODEL, TINY_TRAIN

FAST = TrainConfig(epochs=40, batch_size=128, lr=3e-3, patience=40, seed=0)


def toy_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The planners' toy system x' = x + B u, x in the unit box's neighbourhood: (n, 2) each."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    u = torch.rand(n, 2, generator=g) * 2 - 1
    return x, u, x + u @ B_MAT.T


@pytest.fixture(scope="module")
def trained() -> MCDropoutDynamics:
    torch.manual_seed(0)
    model = MCDropoutDynamics(2, 2, members=5, hidden=64, layers=2, dropout=0.05)
    train = toy_data(3000, 0)
    model.fit_normalizers(*train)
    fit(model, train, toy_data(500, 1), FAST)
    return model.eval()


def test_members_differ_with_dropout_and_agree_without() -> None:
    torch.manual_seed(0)
    x, u, _ = toy_data(32, 2)
    with torch.no_grad():
        model = MCDropoutDynamics(2, 2, members=4, dropout=0.3).eval()
        on, planned = model(x, u).mean, model.folded().mean(x, u)  # (E, B, S) each
        off = MCDropoutDynamics(2, 2, members=4, dropout=0.0).eval()(x, u).mean
    for means in (on, planned):  # the module and the planners' folded form
        assert (means - means[:1]).abs().amax(dim=(1, 2))[1:].min() > 1e-4  # every member its own mask
    torch.testing.assert_close(off, off[:1].expand_as(off))


def test_prediction_interface_and_shapes() -> None:
    torch.manual_seed(0)
    model = MCDropoutDynamics(3, 2, members=5, hidden=16, layers=3, dropout=0.2).eval()
    x, u = torch.randn(7, 3), torch.randn(7, 2)
    pred = model(x, u)
    assert isinstance(pred, Prediction) and pred.mean.shape == pred.var.shape == (5, 7, 3)
    mean, var = pred.moments()
    assert mean.shape == var.shape == (7, 3) and (var > 0).all()
    per_member = model(x.expand(5, 7, 3), u.expand(5, 7, 2))  # (E, B, *) inputs, one batch per member
    assert per_member.mean.shape == (5, 7, 3)
    assert model.loss(x.expand(5, 7, 3), u.expand(5, 7, 2), x.expand(5, 7, 3)).shape == (5,)
    folded = model.folded()
    assert isinstance(folded, FoldedMCDropout) and folded is model.folded()  # cached until the weights change
    means, draws = folded.sample(x, u, folded.noise((1, 5, 7, 3), None, x)[0])
    assert means.shape == draws.shape == folded.mean(x, u).shape == (5, 7, 3)


def test_folded_form_matches_the_module_without_dropout() -> None:
    torch.manual_seed(0)
    model = MCDropoutDynamics(3, 2, members=3, dropout=0.0).eval()
    model.fit_normalizers(torch.randn(50, 3) * 4 + 1, torch.randn(50, 2), torch.randn(50, 3))
    x, u = torch.randn(9, 3), torch.randn(9, 2)
    with torch.no_grad():
        pred = model(x, u)
        folded = model.folded()
        torch.testing.assert_close(folded.mean(x, u), pred.mean, rtol=1e-5, atol=1e-5)
        noise = torch.randn(3, 9, 3)
        torch.testing.assert_close(folded.sample(x, u, noise)[1], pred.sample(noise), rtol=1e-4, atol=1e-5)


def test_trains_on_a_toy_linear_system(trained: MCDropoutDynamics) -> None:
    x, u, target = toy_data(1000, 3)
    with torch.no_grad():
        mean, var = trained(x, u).moments()
        metrics = regression_metrics(mean, target, var, base=x)
        inside = trained(x, u).mean.var(0).mean()
        outside = trained(4 * x, 4 * u).mean.var(0).mean()  # inputs 4x beyond the training range
    assert metrics["r2_delta_min"] > 0.98, metrics
    assert outside > 10 * inside, (outside, inside)


def test_cem_plans_with_it(trained: MCDropoutDynamics) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 2, generator=g) - 0.5
    goal = x + (torch.rand(8, 2, generator=g) - 0.5) * 1.2
    cfg = PlanConfig(horizon=3, samples=256, iterations=8, particles=5)
    planner = make_planner("cem", trained, quadratic_objective(), -torch.ones(2), torch.ones(2), cfg,
                           settings={"noise_beta": 0.0, "init_std": 0.5})
    result = planner.plan(x, {"goal": goal})
    assert result.actions.shape == (8, 2) and result.trajectory.shape == (8, 4, 2)
    assert (result.actions - optimal_first_action(x, goal)).abs().max() < 0.2


def test_config_selects_it_and_artifacts_round_trip(nav_data: Transitions, tmp_path: Path) -> None:
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    cfg = dataclasses.replace(TINY_MODEL, uncertainty="mc_dropout", dropout=0.2)
    model = train_world_model(nav_data, spec, cfg, TINY_TRAIN)
    assert isinstance(model.dynamics, MCDropoutDynamics) and model.dynamics.members == 3
    assert (model.dynamics.var_scale != 1).any()  # calibrated like the ensemble
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert isinstance(loaded.dynamics, MCDropoutDynamics) and loaded.model_config == cfg
    x, u = torch.as_tensor(nav_data.obs[:16]), torch.as_tensor(nav_data.actions[:16])
    with torch.no_grad():
        torch.manual_seed(1)
        before = model.dynamics(x, u)
        torch.manual_seed(1)
        after = loaded.dynamics(x, u)
    torch.testing.assert_close(after.mean, before.mean)
    torch.testing.assert_close(after.var * after.scale, before.var * before.scale)


def test_bad_settings_are_named_and_the_cli_flag_reaches_the_config() -> None:
    with pytest.raises(ValueError, match="needs dynamics 'ensemble'"):
        ModelConfig(dynamics="mlp", uncertainty="mc_dropout")
    with pytest.raises(ValueError, match="dropout must be in"):
        ModelConfig(uncertainty="mc_dropout", dropout=1.0)
    with pytest.raises(ValueError, match="uncertainty must be one of"):
        ModelConfig(uncertainty="bayes")
    from cluster.commands.train import add_model_options, configs_from_args

    parser = argparse.ArgumentParser()
    add_model_options(parser)
    model_cfg, _ = configs_from_args(parser.parse_args(["--uncertainty", "mc_dropout", "--dropout", "0.2"]))
    assert (model_cfg.uncertainty, model_cfg.dropout) == ("mc_dropout", 0.2)
    assert isinstance(build_dynamics(space_spec(make_env("Nav2D-v0"), "Nav2D-v0"), model_cfg), MCDropoutDynamics)


def test_the_comparison_benchmark_runs_at_a_tiny_budget_and_its_page_renders(tmp_path: Path) -> None:
    import json

    from benchmarks import docs
    from benchmarks.uncertainty import MODELS, run

    result = {"benchmark": "uncertainty", "date": "2026-12-07"} | run(["Pendulum-v1"], 3, [0], 2, epochs=2)
    assert [r["model"] for r in result["summary"]] == list(MODELS)
    assert all(r["off_data"]["ratio"] and r["inference_us"] for r in result["rows"])
    (tmp_path / "uncertainty.json").write_text(json.dumps(result))
    page = next(p for p in docs.PAGES if p.name == "uncertainty")
    text = docs.render(page, tmp_path)
    assert text.startswith(f"# {page.title}\n") and "$" not in text and "MC dropout" in text
    assert "None" not in page.headline(result)
