"""The shared trainer: early stopping restores the best weights, bootstrap resampling is per member."""

from __future__ import annotations

import torch
from torch import nn

from worldmodel.config import TrainConfig
from worldmodel.fit import fit


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
