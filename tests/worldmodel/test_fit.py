"""The shared trainer: early stopping restores the best weights, bootstrap resampling is per member,
and a checkpointed fit resumes to the result of an uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from worldmodel import training
from worldmodel.config import TrainConfig
from worldmodel.dynamics import ProbabilisticEnsemble
from worldmodel.envs import make_env, space_spec
from worldmodel.fit import fit
from worldmodel.training import train_world_model

from .conftest import TINY_MODEL


class Scripted(nn.Module):
    """A one-parameter 'model' whose validation loss follows a script, to test stopping exactly."""

    members = 1

    def __init__(self, val_losses: list[float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.script = iter(val_losses)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return (self.w - 1.0).square().reshape(1) + 0 * x.sum()
        return torch.tensor([next(self.script)]) + 0 * self.w


def test_early_stopping_keeps_best_epoch_and_stops_after_patience() -> None:
    model = Scripted([3.0, 2.0, 1.0, 1.5, 1.2, 1.1, 0.9999, 5.0, 5.0])
    x = torch.zeros(4, 1)
    # Snapshot w after each epoch by watching which epoch is restored: w grows every epoch.
    result = fit(model, [x], [x], TrainConfig(epochs=50, batch_size=4, lr=0.1, patience=3, bootstrap=False))
    assert result.best_epoch == 2 and result.best_val_loss == 1.0
    assert result.epochs == 6  # epochs 3, 4, 5 did not improve
    w_best = model.w.item()
    assert 0.0 < w_best < 1.0


def test_on_epoch_hears_every_epoch_run_with_its_validation_loss() -> None:
    model = Scripted([3.0, 2.0, 1.0, 1.5, 1.2, 1.1, 5.0])
    x = torch.zeros(4, 1)
    heard: list[tuple[int, float]] = []
    result = fit(model, [x], [x], TrainConfig(epochs=50, batch_size=4, lr=0.1, patience=3, bootstrap=False),
                 on_epoch=lambda epoch, loss: heard.append((epoch, loss)))
    assert [e for e, _ in heard] == [1, 2, 3, 4, 5, 6] and result.epochs == 6
    assert [v for _, v in heard] == pytest.approx([3.0, 2.0, 1.0, 1.5, 1.2, 1.1])


def test_train_world_model_reports_each_stage_epochs(nav_data) -> None:
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    heard: list[tuple[str, int, float]] = []
    model = train_world_model(nav_data, spec, TINY_MODEL, TrainConfig(epochs=3, patience=3),
                              on_epoch=lambda stage, epoch, loss: heard.append((stage, epoch, loss)))
    stages = [s for s, _, _ in heard]
    assert stages == sorted(stages, key=["dynamics", "reward", "termination"].index)  # in stage order
    for stage in ("dynamics", "reward"):
        fitted = model.metrics[stage]["fit"]
        assert [e for s, e, _ in heard if s == stage] == list(range(1, fitted["epochs"] + 1))
        assert min(v for s, _, v in heard if s == stage) == pytest.approx(fitted["best_val_loss"])


def test_restored_weights_are_those_of_the_best_epoch() -> None:
    x = torch.zeros(4, 1)
    ref = Scripted([9.0, 8.0, 7.0])  # train three epochs and remember w after the third
    fit(ref, [x], [x], TrainConfig(epochs=3, batch_size=4, lr=0.1, patience=10, bootstrap=False))
    model = Scripted([9.0, 8.0, 7.0, 8.0, 8.0])
    fit(model, [x], [x], TrainConfig(epochs=5, batch_size=4, lr=0.1, patience=10, bootstrap=False))
    assert model.w.item() == ref.w.item()


class Recorder(nn.Module):
    """Records which rows each member was trained on."""

    def __init__(self, members: int) -> None:
        super().__init__()
        self.members = members
        self.w = nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(x[..., 0].clone())  # (E, b)
        return (self.w.square() + 0 * x.mean(dim=tuple(range(1, x.dim())))).expand(self.members)


def test_bootstrap_gives_each_member_its_own_resample() -> None:
    x = torch.arange(100.0).unsqueeze(1)
    model = Recorder(members=3)
    fit(model, [x], [x], TrainConfig(epochs=1, batch_size=100, bootstrap=True, patience=1))
    rows = model.seen[0]  # (3, 100)
    distinct = [len(set(r.tolist())) for r in rows]
    assert all(50 < d < 80 for d in distinct)  # about 63% distinct rows in a bootstrap sample
    assert not torch.equal(rows[0].sort().values, rows[1].sort().values)
    model = Recorder(members=3)
    fit(model, [x], [x], TrainConfig(epochs=1, batch_size=100, bootstrap=False, patience=1))
    assert all(len(set(r.tolist())) == 100 for r in model.seen[0])


class Crash(RuntimeError):
    """Stands in for a killed process."""


class CrashingEnsemble(ProbabilisticEnsemble):
    """A real ensemble that dies during the validation of epoch ``crash_at`` (0-based), before it is saved."""

    def __init__(self, crash_at: int | None) -> None:
        super().__init__(2, 1, members=3, hidden=16, layers=2)
        self.crash_at, self.epoch = crash_at, 0

    def val_loss(self, *batch: torch.Tensor) -> torch.Tensor:
        if self.epoch == self.crash_at:
            raise Crash(f"killed in epoch {self.epoch}")
        self.epoch += 1
        return super().val_loss(*batch)


def _linear_data(rows: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    obs, act = torch.randn(rows, 2, generator=g), torch.randn(rows, 1, generator=g)
    return [obs, act, obs + 0.1 * act + 0.01 * torch.randn(rows, 2, generator=g)]


def _fresh(crash_at: int | None) -> CrashingEnsemble:
    torch.manual_seed(0)
    model = CrashingEnsemble(crash_at)
    model.fit_normalizers(*_linear_data(200))
    return model


def test_a_fit_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path) -> None:
    train, val = _linear_data(200), _linear_data(50)
    cfg = TrainConfig(epochs=6, batch_size=32, patience=6)
    ref_model = _fresh(None)
    ref = fit(ref_model, train, val, cfg)

    path = tmp_path / "dynamics.pt"
    with pytest.raises(Crash):
        fit(_fresh(crash_at=3), train, val, cfg, checkpoint=path)
    model = _fresh(None)  # a new process: fresh weights, then the checkpoint
    resumed = fit(model, train, val, cfg, checkpoint=path)
    assert resumed.resumed_from == 3 and resumed.history == ref.history
    assert (resumed.best_epoch, resumed.best_val_loss, resumed.epochs) == (ref.best_epoch, ref.best_val_loss, 6)
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name

    # A finished checkpoint: no training, the final weights.
    again = _fresh(None)
    done = fit(again, train, val, cfg, checkpoint=path)
    assert done.resumed_from == 6 and done.history == ref.history
    assert all(torch.equal(a, b) for a, b in zip(ref_model.state_dict().values(), again.state_dict().values()))
    assert not list(tmp_path.glob(".*"))  # no temp files left behind

    with pytest.raises(ValueError, match="different fit"):
        fit(_fresh(None), train, val, TrainConfig(epochs=7, batch_size=32, patience=6), checkpoint=path)


def test_train_world_model_skips_finished_stages_on_resume(nav_data, tmp_path, monkeypatch) -> None:
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    cfg = TrainConfig(epochs=3, patience=3)
    ref = train_world_model(nav_data, spec, TINY_MODEL, cfg)

    real_fit = training.fit
    def crash_in_reward(*args, **kwargs):  # noqa: E306
        if args[4] == "reward":
            raise Crash("killed while fitting the reward model")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", crash_in_reward)
    with pytest.raises(Crash):
        train_world_model(nav_data, spec, TINY_MODEL, cfg, checkpoint_dir=tmp_path)
    monkeypatch.setattr(training, "fit", real_fit)
    assert (tmp_path / "dynamics.pt").exists() and not (tmp_path / "reward.pt").exists()
    model = train_world_model(nav_data, spec, TINY_MODEL, cfg, checkpoint_dir=tmp_path)
    assert model.metrics["dynamics"]["fit"]["resumed_from"] == ref.metrics["dynamics"]["fit"]["epochs"]
    assert model.metrics["reward"]["fit"]["resumed_from"] == 0
    for name, module in ref.modules().items():
        for (key, a), b in zip(module.state_dict().items(), model.modules()[name].state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key}"
    assert model.metrics["dynamics"]["mse"] == ref.metrics["dynamics"]["mse"]
