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
    path = None if checkpoint is None else Path(checkpoint)
    signature = _signature(cfg, desc, n, len(val[0]), members)
    state = _load(path, signature) if path is not None else None
    resumed_from, seconds_before = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        resumed_from, seconds_before = len(state["history"]), state["seconds"]
        best_val, best_epoch, history = state["best_val"], state["best_epoch"], list(state["history"])
        torch.set_rng_state(state["torch_rng"])
        if state["done"]:
            model.eval()
            return FitResult(len(history), best_epoch, best_val, seconds_before, history, resumed_from)
        opt.load_state_dict(state["optimizer"])
        best_state = state["best_state"]
        gen.set_state(state["generator"])
    start = time.perf_counter() - seconds_before

    def checkpoint_state(done: bool, seconds: float) -> dict[str, Any]:
        saved: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "signature": signature, "done": done,
                                 "model": model.state_dict(), "best_val": best_val, "best_epoch": best_epoch,
                                 "history": history, "torch_rng": torch.get_rng_state(), "seconds": seconds}
        if not done:  # what continuing the loop needs; a finished fit only loads its final weights
            saved |= {"optimizer": opt.state_dict(), "best_state": best_state, "generator": gen.get_state()}
        return saved

    stopped = False
    bar = tqdm(range(resumed_from, cfg.epochs), desc=desc, disable=not progress, leave=False, unit="epoch")
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
        if on_epoch is not None:
            on_epoch(epoch + 1, val_loss)
        # Only a 1% better validation loss resets the patience (as in mbrl-lib): slow creep on a
        # converged model is not worth more epochs. The first epoch always counts.
        if best_state is None or val_loss < best_val - 1e-2 * abs(best_val):
            best_val, best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= cfg.patience:
            stopped = True
        if path is not None and not (stopped or epoch == cfg.epochs - 1):
            _save(path, checkpoint_state(False, time.perf_counter() - start))
        if stopped:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    seconds = time.perf_counter() - start
    if path is not None:
        # The finished state is saved too, so a caller resuming a multi-stage run skips this stage.
        _save(path, checkpoint_state(True, seconds))
    return FitResult(len(history), best_epoch, best_val, seconds, history, resumed_from)


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
