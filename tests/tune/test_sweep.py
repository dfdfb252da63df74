"""A 2-trial sweep on one local Ray: every trial trains on the older episodes, is scored on the newest
and leaves a model that loads; the best is registered as a candidate, once."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from ray import tune

from learners.retrain import HeldOutLogs, read_held_out
from tests.ray_fixtures import ray_local  # noqa: F401
from tune.sweep import SweepConfig, SweepResult, register_best, run_sweep
from worldmodel.artifact import load_model
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.data import write_transitions
from worldmodel.envs.collect import collect
from worldmodel.holdout import holdout_score
from worldmodel.registry import ModelRegistry

TINY_MODEL = ModelConfig(ensemble_size=2, hidden=16, layers=1, reward_hidden=16, reward_layers=1)
TINY_TRAIN = TrainConfig(epochs=2, patience=2, seed=3)
SPACE = {"hidden": tune.choice([8, 32]), "lr": tune.loguniform(1e-3, 1e-2)}
HOLDOUT = 0.25


@pytest.fixture(scope="module")
def logs(ray_local, tmp_path_factory: pytest.TempPathFactory) -> HeldOutLogs:  # noqa: F811
    root = str(tmp_path_factory.mktemp("logs"))
    write_transitions(root, collect("Nav2D-v0", episodes=8, seed=1), "Nav2D-v0")
    return read_held_out(root, HOLDOUT)


@pytest.fixture(scope="module")
def sweep() -> SweepConfig:
    return SweepConfig(samples=2, space=SPACE, model=TINY_MODEL, train=TINY_TRAIN, holdout_fraction=HOLDOUT)


@pytest.fixture(scope="module")
def swept(logs: HeldOutLogs, sweep: SweepConfig, tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepResult, list]:
    progress: list[str] = []
    return run_sweep(logs, sweep, str(tmp_path_factory.mktemp("runs")), say=progress.append), progress


def test_best_trial_has_the_lowest_score(swept) -> None:
    result, progress = swept
    assert len(result.trials) == 2 and len({t.trial_id for t in result.trials}) == 2
    assert result.best.score == min(t.score for t in result.trials)
    for trial in result.trials:
        assert set(trial.config) == set(SPACE) and trial.config["hidden"] in (8, 32)
        assert 1e-3 <= trial.config["lr"] <= 1e-2
        assert math.isclose(trial.score, trial.dynamics_nmse + trial.reward_nmse) and trial.seconds > 0
        assert Path(trial.artifact_dir).is_relative_to(result.run_dir)
    assert [line.split(":")[0] for line in progress] == ["trial 1/2", "trial 2/2"], progress


def test_each_trial_model_loads_and_scores_as_reported(swept, logs: HeldOutLogs) -> None:
    result, _ = swept
    for trial in result.trials:
        model = load_model(trial.artifact_dir)
        assert model.model_config.hidden == trial.config["hidden"] and model.train_config.lr == trial.config["lr"]
        assert model.model_config.ensemble_size == TINY_MODEL.ensemble_size and model.train_config.epochs == 2
        assert model.data_fingerprint == logs.fingerprint
        # Trained on the older episodes only: the holdout's are the ones it is scored on.
        assert model.metrics["data"]["transitions"] == len(logs.train)
        assert holdout_score(model, logs.holdout)["score"] == pytest.approx(trial.score, rel=1e-5)


def test_the_best_is_registered_once_as_a_candidate(swept, logs: HeldOutLogs, sweep: SweepConfig, tmp_path) -> None:
    result, _ = swept
    registry_uri = str(tmp_path / "registry")
    info, existing = register_best(result, logs, sweep, registry_uri)
    assert not existing and info.version == "1.0.0" and info.stage == "candidate"
    assert info.holdout is not None and info.holdout["better"] and info.holdout["production"] is None
    assert info.holdout["candidate"]["score"] == pytest.approx(result.best.score, rel=1e-5)
    assert info.lineage["sweep"]["trial_id"] == result.best.trial_id
    assert info.lineage["data_fingerprint"] == logs.fingerprint and info.lineage["run_id"]
    again, existing = register_best(result, logs, sweep, registry_uri)
    assert existing and again.version == "1.0.0"
    assert [v.version for v in ModelRegistry(registry_uri).versions()] == ["1.0.0"]


def test_the_same_seed_draws_and_scores_the_same_trials(swept, logs: HeldOutLogs, sweep: SweepConfig,
                                                        tmp_path) -> None:
    first, _ = swept
    again = run_sweep(logs, sweep, str(tmp_path))
    assert [t.config for t in again.trials] == [t.config for t in first.trials]
    assert [t.score for t in again.trials] == pytest.approx([t.score for t in first.trials], rel=1e-6)


@pytest.mark.parametrize("scheduler", ["asha", "fifo"])
def test_asha_stops_the_trial_that_trails_at_the_same_epoch(logs: HeldOutLogs, tmp_path, scheduler: str) -> None:
    # One trial at a time, the good one first: it sets the bar at epoch 2, where ASHA compares the next.
    sweep = SweepConfig(samples=1, space={"lr": tune.grid_search([3e-3, 1e-9])}, model=TINY_MODEL,
                        train=TrainConfig(epochs=6, patience=6, seed=3), holdout_fraction=HOLDOUT,
                        scheduler=scheduler, grace_epochs=2, concurrent_trials=1)
    progress: list[str] = []
    result = run_sweep(logs, sweep, str(tmp_path), say=progress.append)
    assert [line.split(":")[0] for line in progress] == ["trial 1/2", "trial 2/2"], progress
    if scheduler == "fifo":
        assert [t.config["lr"] for t in result.trials] == [3e-3, 1e-9] and result.stopped == ()
        assert result.best.config["lr"] == 3e-3
        return
    assert [t.config["lr"] for t in result.trials] == [3e-3] and result.best.config["lr"] == 3e-3
    (stopped,) = result.stopped
    assert stopped.config == {"lr": 1e-9} and stopped.epochs == 2 and math.isfinite(stopped.dynamics_val_loss)
    assert "stopped early after 2 dynamics epochs" in progress[1]
    assert load_model(result.best.artifact_dir).metrics["dynamics"]["fit"]["epochs"] == 6


@pytest.mark.parametrize("kwargs, message", [
    ({"samples": 0}, "samples must be an integer >= 1, got 0"),
    ({"space": {}}, "the search space is empty"),
    ({"space": {"hiden": 8}}, "unknown setting.s. hiden"),
    ({"space": {"device": "cpu"}}, "unknown setting.s. device"),
    ({"space": {"hidden": tune.choice([8, 0])}}, "search space hidden=0: hidden must be an integer >= 1"),
    ({"space": {"lr": tune.uniform(-1.0, 1.0)}}, "search space lr=-1.0: lr must be > 0"),
    ({"holdout_fraction": 1.0}, "holdout_fraction must be in .0, 1."),
])
def test_bad_sweep_settings_are_named(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        SweepConfig(**kwargs)


def test_fixed_settings_apply_when_checking_the_others() -> None:
    # A fleet model's width is a multiple of its heads: each drawn width is checked with the fixed kind applied.
    cfg = SweepConfig(space={"dynamics": "fleet", "hidden": tune.choice([16, 32])})
    assert cfg.configs({"dynamics": "fleet", "hidden": 16})[0].hidden == 16
    SweepConfig(space={"hidden": tune.choice([16, 18])})  # any width suits the default ensemble
    with pytest.raises(ValueError, match="search space hidden=18"):
        SweepConfig(space={"dynamics": "fleet", "hidden": tune.choice([16, 18])})
