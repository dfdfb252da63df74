"""One trainer for every model: ensembles train all members together on bootstrapped batches.

A model is trainable here when it has ``members`` and ``loss(*tensors) -> (E,)``
taking per-member batches (E, B, ...). Rows are gathered for all members with one
index tensor, so there is no Python loop over members.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from tqdm import tqdm

from worldmodel.config import TrainConfig


@dataclass
class FitResult:
    """What a fit did: epochs run, best validation loss and its epoch, wall time."""

    epochs: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    history: list[float] = field(default_factory=list)
    """Mean validation loss after each epoch."""


def fit(
    model: nn.Module,
    train: Sequence[torch.Tensor],
    val: Sequence[torch.Tensor],
    cfg: TrainConfig,
    desc: str = "fit",
    progress: bool = False,
) -> FitResult:
    """Fit ``model`` with AdamW and early stopping, restoring the best weights at the end.

    Args:
        model: has ``members`` (E) and ``loss(*batch) -> (E,)``; early stopping uses its
            ``val_loss`` (same signature) when it has one, else ``loss``.
        train: tensors with N rows each (N, ...), on the model's device.
        val: tensors with M rows each (M, ...), shared by all members.
        cfg: epochs, batch size, optimiser, patience, bootstrap and seed.
        desc: progress bar label.
        progress: show a progress bar on stderr.
    """
    n = len(train[0])
    if n == 0 or len(val[0]) == 0:
        raise ValueError(f"{desc}: need training and validation rows, got {n} and {len(val[0])}")
    members = model.members
    device = train[0].device
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.bootstrap and members > 1:
        rows = torch.randint(n, (members, n), generator=gen)  # (E, N) each member's resample
    else:
        rows = torch.arange(n).expand(members, n)
    rows = rows.to(device)
    val_batch = [v.unsqueeze(0).expand(members, *v.shape) for v in val]  # (E, M, ...)

    val_loss_fn = getattr(model, "val_loss", model.loss)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_state, best_val, best_epoch, history = None, float("inf"), 0, []
    start = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not progress, leave=False, unit="epoch")
    for epoch in bar:
        model.train()
        order = torch.argsort(torch.rand(members, n, generator=gen), dim=1).to(device)
        epoch_rows = rows.gather(1, order)  # (E, N) shuffled per member
        for i in range(0, n, cfg.batch_size):
            index = epoch_rows[:, i:i + cfg.batch_size]  # (E, b)
            loss = model.loss(*(t[index] for t in train)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val_loss = val_loss_fn(*val_batch).mean().item()
        history.append(val_loss)
        bar.set_postfix(val_loss=f"{val_loss:.4f}")
        # Only a 1% better validation loss resets the patience (as in mbrl-lib): slow creep on a
        # converged model is not worth more epochs. The first epoch always counts.
        if best_state is None or val_loss < best_val - 1e-2 * abs(best_val):
            best_val, best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= cfg.patience:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(len(history), best_epoch, best_val, time.perf_counter() - start, history)
