"""One trainer for every model: ensembles train all members together on bootstrapped batches.

A model is trainable here when it has ``members`` and ``loss(*tensors) -> (E,)``
taking per-member batches (E, B, ...). Rows are gathered for all members with one
index tensor, so there is no Python loop over members.

With a checkpoint file, ``fit`` saves everything the loop depends on after every
epoch (weights, optimiser, best weights so far, history, the batching generator and
torch's global generator), so a fit killed part way and called again with the same
arguments continues from its last finished epoch and ends exactly where an
uninterrupted fit would have.
"""

from __future__ import annotations

import copy
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow.fs as pafs
import torch
from torch import nn
from tqdm import tqdm

from worldmodel.config import TrainConfig
from worldmodel.data.writer import publish_bytes

CHECKPOINT_FORMAT = "fleetwm.fit-checkpoint/1"


@dataclass
class FitResult:
    """What a fit did: epochs run, best validation loss and its epoch, wall time."""

    epochs: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    history: list[float] = field(default_factory=list)
    """Mean validation loss after each epoch."""
    resumed_from: int = 0
    """Epochs already finished in the checkpoint this fit resumed from (0 when it started fresh)."""


def fit(
    model: nn.Module,
    train: Sequence[torch.Tensor],
    val: Sequence[torch.Tensor],
    cfg: TrainConfig,
    desc: str = "fit",
    progress: bool = False,
    checkpoint: str | Path | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
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
        checkpoint: a file to save the fit's state to after every epoch, atomically; when it
            exists the fit resumes from it (a finished fit just loads its final weights).
        on_epoch: called after each epoch this call runs with (epochs done, validation loss), e.g. to
            report to a scheduler that stops unpromising fits (Ray Tune's ASHA).

    Returns:
        The fit's summary; ``resumed_from`` says how many epochs came from the checkpoint.

    Raises:
        ValueError: no training or validation rows, or a checkpoint written by a different fit.
    """
    n = len(train[0])
    if n == 0 or len(val[0]) == 0:
        raise ValueError(f"{desc}: need training and validation rows, got {n} and {len(val[0])}")
    members = model.members
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.bootstrap and members > 1:
        rows = torch.randint(n, (members, n), generator=gen)  # (E, N) each member's resample
    else:
        rows = torch.arange(n).expand(members, n)
    rows = rows.to(train[0].device)
    val_batch = [v.unsqueeze(0).expand(members, *v.shape) for v in val]  # (E, M, ...)
    val_loss_fn = getattr(model, "val_loss", model.loss)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    path = None if checkpoint is None else Path(checkpoint)
    run = _Run(model, opt, gen, _signature(cfg, desc, n, len(val[0]), members))
    state = _load(path, run.signature) if path is not None else None
    if state is not None and run.resume(state):  # a finished fit: its final weights are loaded
        model.eval()
        return run.result(run.seconds_before)
    start = time.perf_counter() - run.seconds_before
    bar = tqdm(range(run.resumed_from, cfg.epochs), desc=desc, disable=not progress, leave=False, unit="epoch")
    for epoch in bar:
        _train_epoch(model, opt, train, rows, gen, cfg.batch_size)
        with torch.no_grad():
            val_loss = val_loss_fn(*val_batch).mean().item()
        bar.set_postfix(val_loss=f"{val_loss:.4f}")
        if on_epoch is not None:
            on_epoch(epoch + 1, val_loss)
        stopped = run.record(epoch, val_loss, cfg.patience)
        if path is not None and not (stopped or epoch == cfg.epochs - 1):
            _save(path, run.state(False, time.perf_counter() - start))
        if stopped:
            break
    bar.close()
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    model.eval()
    seconds = time.perf_counter() - start
    if path is not None:
        # The finished state is saved too, so a caller resuming a multi-stage run skips this stage.
        _save(path, run.state(True, seconds))
    return run.result(seconds)


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, train: Sequence[torch.Tensor], rows: torch.Tensor,
                 gen: torch.Generator, batch_size: int) -> None:
    """One pass over every member's ``rows`` (E, N), shuffled per member with ``gen``; leaves ``model`` in eval mode."""
    members, n = rows.shape
    model.train()
    order = torch.argsort(torch.rand(members, n, generator=gen), dim=1).to(rows.device)
    epoch_rows = rows.gather(1, order)  # (E, N) shuffled per member
    for i in range(0, n, batch_size):
        index = epoch_rows[:, i:i + batch_size]  # (E, b)
        loss = model.loss(*(t[index] for t in train)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


@dataclass
class _Run:
    """What a fit's epochs change, and what its checkpoint saves and restores."""

    model: nn.Module
    opt: torch.optim.Optimizer
    gen: torch.Generator
    """The batching generator (bootstrap rows, then each epoch's shuffle)."""
    signature: dict[str, Any]
    best_state: dict[str, Any] | None = None
    best_val: float = float("inf")
    best_epoch: int = 0
    history: list[float] = field(default_factory=list)
    resumed_from: int = 0
    seconds_before: float = 0.0

    def record(self, epoch: int, val_loss: float, patience: int) -> bool:
        """Note epoch ``epoch``'s validation loss; True when the fit should stop (patience spent)."""
        self.history.append(val_loss)
        # Only a 1% better validation loss resets the patience (as in mbrl-lib): slow creep on a
        # converged model is not worth more epochs. The first epoch always counts.
        if self.best_state is None or val_loss < self.best_val - 1e-2 * abs(self.best_val):
            self.best_val, self.best_epoch = val_loss, epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
            return False
        return epoch - self.best_epoch >= patience

    def state(self, done: bool, seconds: float) -> dict[str, Any]:
        """The checkpoint: everything the loop depends on, or for a finished fit its final weights."""
        saved: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "signature": self.signature, "done": done,
                                 "model": self.model.state_dict(), "best_val": self.best_val,
                                 "best_epoch": self.best_epoch, "history": self.history,
                                 "torch_rng": torch.get_rng_state(), "seconds": seconds}
        if not done:  # what continuing the loop needs; a finished fit only loads its final weights
            saved |= {"optimizer": self.opt.state_dict(), "best_state": self.best_state,
                      "generator": self.gen.get_state()}
        return saved

    def resume(self, state: dict[str, Any]) -> bool:
        """Restore ``state`` (a checkpoint of this fit); True when it is of a finished fit."""
        self.model.load_state_dict(state["model"])
        self.resumed_from, self.seconds_before = len(state["history"]), state["seconds"]
        self.best_val, self.best_epoch, self.history = state["best_val"], state["best_epoch"], list(state["history"])
        torch.set_rng_state(state["torch_rng"])
        if state["done"]:
            return True
        self.opt.load_state_dict(state["optimizer"])
        self.best_state = state["best_state"]
        self.gen.set_state(state["generator"])
        return False

    def result(self, seconds: float) -> FitResult:
        return FitResult(len(self.history), self.best_epoch, self.best_val, seconds, self.history,
                         self.resumed_from)


def _signature(cfg: TrainConfig, desc: str, train_rows: int, val_rows: int, members: int) -> dict[str, Any]:
    """What must match for a checkpoint to belong to this fit (the device may differ)."""
    settings = {k: v for k, v in cfg.to_dict().items() if k != "device"}
    return {"desc": desc, "train_rows": train_rows, "val_rows": val_rows, "members": members, "config": settings}


def _load(path: Path, signature: dict[str, Any]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    # On the CPU: generator states must stay there; load_state_dict moves weights to the model's device.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a fit checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    if state["signature"] != signature:
        raise ValueError(f"{path} was written by a different fit: it has {state['signature']}, this fit is "
                         f"{signature}; remove it or use another checkpoint path")
    return state


def _save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` all or nothing (temp file beside it, then rename)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    publish_bytes(pafs.LocalFileSystem(), str(path.absolute()), buffer.getvalue())
