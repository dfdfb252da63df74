"""Training a world model from logged transitions: split, fit, calibrate, evaluate.

Episodes, not rows, are split into train / validation / test, so no test
transition has a neighbour from the same episode in training. Validation data
drives early stopping and variance calibration; the reported metrics come from
the test episodes alone.

Shapes: ``B`` rows, ``W`` sequence windows, ``L`` window length, ``S`` state, ``A`` action.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from worldmodel.calibration import fit_var_scale
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.data.batch import Transitions
from worldmodel.device import resolve_device
from worldmodel.dynamics import Prediction
from worldmodel.envs import SpaceSpec
from worldmodel.fit import FitResult, fit
from worldmodel.metrics import classification_metrics, regression_metrics
from worldmodel.model import WorldModel, build_dynamics, build_reward, build_termination
from worldmodel.recurrent import RecurrentDynamics

FITS = ("dynamics", "reward", "termination")
"""The fits of one training run, in order; each checkpoints to ``<fit>.pt`` and reports in ``metrics[<fit>]``."""
MIN_EPISODES = 20
"""From this many episodes on, whole episodes are split into train / validation / test; fewer are chunked."""
CHUNK_STEPS = 20
"""Steps per chunk when episodes are chunked for the split."""
MIN_CHUNKS = 10
"""Chunks made when ``CHUNK_STEPS`` leaves too few to split (fewer than 3, as when a survival task's
episodes end after a few steps): the rows are cut into about this many shorter chunks instead."""


@dataclass(frozen=True)
class Split:
    train: Transitions
    val: Transitions
    test: Transitions


def split_by_episode(data: Transitions, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Assign whole episodes to train / validation / test at random (seeded)."""
    episodes = np.unique(data.eps_id.astype(str))
    if len(episodes) < 3:
        raise ValueError(f"need at least 3 episodes to split train/validation/test, got {len(episodes)}")
    order = np.random.default_rng(seed).permutation(episodes)
    n_test = max(1, round(test_fraction * len(order)))
    n_val = max(1, round(val_fraction * len(order)))
    eps = data.eps_id.astype(str)
    test = np.isin(eps, order[:n_test])
    val = np.isin(eps, order[n_test:n_test + n_val])
    return Split(data.select(~(test | val)), data.select(val), data.select(test))


def chunk_episodes(data: Transitions, length: int = CHUNK_STEPS, min_episodes: int = MIN_EPISODES) -> Transitions:
    """Relabel rows so that ``split_by_episode`` can hold out time-contiguous chunks of few episodes.

    With fewer than ``min_episodes`` episodes, each is cut into chunks of ``length`` steps
    (the last one may be shorter) with eps_id ``"<eps_id>#<chunk>"`` (where that gives fewer than
    3 chunks, about ``MIN_CHUNKS`` shorter ones); otherwise ``data`` is returned as is. One
    200-step episode gives 10 chunks, so the default 10% validation and test fractions hold out
    20 rows each; five episodes give 50 chunks, so validation is spread over 5 different
    stretches of the data rather than one. Small data sets are where this matters: the PETS
    loop (``planners.mbrl``) starts from a single episode.

    Why chunks rather than random rows: consecutive states are nearly equal, so random rows
    held out would each have a training neighbour one step away and validation would not
    notice overfitting. Chunks leak only at their two ends, so validation (early stopping,
    variance calibration) and the reported test metrics are only slightly optimistic. The
    original episode ids stay in the logs; only the copy handed to training is relabelled.

    Args:
        data: B transitions, each episode's rows with ``t`` 0, 1, ...
        length: steps per chunk (no shorter than a recurrent model's sequence length).
        min_episodes: episodes from which whole episodes are split as usual.

    Returns:
        B transitions, the same rows in the same order.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    eps = data.eps_id.astype(str)
    if len(np.unique(eps)) >= min_episodes:
        return data
    ids = _chunk_ids(eps, data.t, length)
    if len(np.unique(ids)) < 3:  # short episodes: too few chunks to split, so shorter ones
        ids = _chunk_ids(eps, data.t, max(1, min(length, len(data) // MIN_CHUNKS)))
    return dataclasses.replace(data, eps_id=ids)


def _chunk_ids(eps: np.ndarray, t: np.ndarray, length: int) -> np.ndarray:
    """``"<eps_id>#<chunk>"`` of each row, chunks of ``length`` steps: (B,) object array."""
    chunk = t.astype(np.int64) // length  # (B,)
    return np.array([f"{e}#{c}" for e, c in zip(eps, chunk)], dtype=object)


def tensors(data: Transitions, device: torch.device) -> dict[str, torch.Tensor]:
    """The columns models train on, as tensors on ``device``."""
    as_t = lambda x: torch.as_tensor(x, device=device)  # noqa: E731
    return {"obs": as_t(data.obs), "actions": as_t(data.actions), "new_obs": as_t(data.new_obs),
            "rewards": as_t(data.rewards), "terminateds": as_t(data.terminateds.astype(np.float32))}


def sequence_windows(data: Transitions, length: int) -> np.ndarray:
    """Row indices of non-overlapping windows of ``length`` consecutive steps of one episode: (W, L).

    Episodes shorter than ``length`` contribute no window.
    """
    order = np.lexsort((data.t, data.eps_id.astype(str)))
    eps = data.eps_id.astype(str)[order]
    starts = np.flatnonzero(np.r_[True, eps[1:] != eps[:-1]])  # first row of each episode (sorted)
    lengths = np.diff(np.r_[starts, len(eps)])
    pos = np.arange(len(eps)) - np.repeat(starts, lengths)  # step within episode
    remaining = np.repeat(starts + lengths, lengths) - np.arange(len(eps))
    first = np.flatnonzero((pos % length == 0) & (remaining >= length))
    return order[first[:, None] + np.arange(length)]


def gather_windows(data: Transitions, cols: dict[str, torch.Tensor], seq_len: int,
                   what: str) -> dict[str, torch.Tensor]:
    """The dynamics columns of ``cols`` as a recurrent model reads them: ``data``'s sequence windows.

    Args:
        data: B transitions.
        cols: ``tensors(data, device)``, rows (B, *).
        seq_len: window length L.
        what: the data's name for the error message (e.g. "the train split").

    Returns:
        ``obs``, ``actions`` and ``new_obs`` as windows (W, L, *).

    Raises:
        ValueError: no episode of ``data`` has ``seq_len`` steps.
    """
    index = torch.as_tensor(sequence_windows(data, seq_len), device=cols["obs"].device)
    if len(index) == 0:
        raise ValueError(f"{what} has no episode of at least seq_len={seq_len} steps")
    return {c: cols[c][index] for c in ("obs", "actions", "new_obs")}  # (W, L, *)


def _fit_dynamics(model: torch.nn.Module, split: Split, cfg: TrainConfig, device: torch.device, progress: bool,
                  checkpoint: Path | None, on_epoch: Callable[[int, float], None] | None = None,
                  ) -> tuple[FitResult, dict[str, dict[str, torch.Tensor]]]:
    """Fit the dynamics model; returns the fit and each split's tensors laid out as the model reads them."""
    cols = ("obs", "actions", "new_obs")
    parts = {name: tensors(getattr(split, name), device) for name in ("train", "val", "test")}
    if isinstance(model, RecurrentDynamics):
        parts = {name: gather_windows(getattr(split, name), part, cfg.seq_len, f"the {name} split")
                 for name, part in parts.items()}
    train, val = parts["train"], parts["val"]
    model.fit_normalizers(*(train[c] for c in cols))
    result = fit(model, [train[c] for c in cols], [val[c] for c in cols], cfg, "dynamics", progress, checkpoint,
                 on_epoch)
    return result, parts


@torch.no_grad()
def predict_rows(model: torch.nn.Module, obs: torch.Tensor, actions: torch.Tensor) -> Prediction:
    """One-step predictions for rows (B, *) or, for a recurrent model, windows (W, L, *) -> rows (W*L, S)."""
    if not isinstance(model, RecurrentDynamics):
        return model(obs, actions)
    h = model.initial_state(obs.shape[0])
    means, variances = [], []
    for t in range(obs.shape[1]):
        h, pred = model.step(h, obs[:, t], actions[:, t])
        means.append(pred.mean)
        variances.append(pred.var)
    return Prediction(torch.stack(means, 2).flatten(1, 2), torch.stack(variances, 2).flatten(1, 2))


def train_world_model(
    data: Transitions,
    spec: SpaceSpec,
    model_cfg: ModelConfig | None = None,
    train_cfg: TrainConfig | None = None,
    progress: bool = False,
    log: Callable[[str], None] = lambda message: None,
    checkpoint_dir: str | Path | None = None,
    on_epoch: Callable[[str, int, float], None] | None = None,
) -> WorldModel:
    """Train dynamics, reward and (when the data has terminal states) termination models.

    With ``checkpoint_dir``, each stage checkpoints to its own file there (``dynamics.pt``,
    ``reward.pt``, ``termination.pt``; see ``fit``), so calling again with the same arguments
    after a crash skips the finished stages, resumes the interrupted one, and returns the
    model an uninterrupted run would have.

    Args:
        data: logged transitions of one environment.
        spec: its observation/action sizes; must match ``data``.
        model_cfg: architecture (defaults: a 5-member probabilistic ensemble).
        train_cfg: fitting settings (defaults: early-stopped AdamW, seed 0).
        progress: show progress bars on stderr.
        log: called with one line per stage.
        checkpoint_dir: a directory for the stages' checkpoints, or None for none.
        on_epoch: called after each epoch of each stage with (stage, epochs done, validation loss);
            the stages are 'dynamics', 'reward' and 'termination', in that order.

    Returns:
        The trained WorldModel with held-out test metrics in ``metrics``.
    """
    model_cfg, train_cfg = model_cfg or ModelConfig(), train_cfg or TrainConfig()
    if (data.obs_dim, data.act_dim) != (spec.obs_dim, spec.act_dim):
        raise ValueError(f"data has obs/action sizes ({data.obs_dim}, {data.act_dim}), "
                         f"but {spec.env_id or 'the env'} has ({spec.obs_dim}, {spec.act_dim})")
    device = resolve_device(train_cfg.device)
    def stage_file(stage: str) -> Path | None:
        return None if checkpoint_dir is None else Path(checkpoint_dir) / f"{stage}.pt"

    def epochs_of(stage: str) -> Callable[[int, float], None] | None:
        return None if on_epoch is None else functools.partial(on_epoch, stage)

    torch.manual_seed(train_cfg.seed)
    split = split_by_episode(data, train_cfg.val_fraction, train_cfg.test_fraction, train_cfg.seed)
    log(f"split {len(data)} transitions into {len(split.train)} train / {len(split.val)} val / "
        f"{len(split.test)} test rows by episode; training on {device}")

    dynamics = build_dynamics(spec, model_cfg).to(device)
    dyn_fit, parts = _fit_dynamics(dynamics, split, train_cfg, device, progress, stage_file("dynamics"),
                                     epochs_of("dynamics"))
    val, test = parts["val"], parts["test"]
    flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
    has_variance = dynamics.probabilistic or dynamics.members > 1
    if has_variance:
        dynamics.var_scale.copy_(fit_var_scale(predict_rows(dynamics, val["obs"], val["actions"]),
                                               flat(val["new_obs"])))
    mean, var = predict_rows(dynamics, test["obs"], test["actions"]).moments()
    dyn_metrics = regression_metrics(mean, flat(test["new_obs"]), var if has_variance else None,
                                     base=flat(test["obs"]))
    log(f"dynamics: {dyn_fit.epochs} epochs{_resumed(dyn_fit)}, test R^2 min {_fmt(dyn_metrics['r2_min'])}")

    tr, va, te = (tensors(getattr(split, n), device) for n in ("train", "val", "test"))
    reward_cols = ("obs", "actions", "new_obs", "rewards")
    reward = build_reward(spec, model_cfg).to(device)
    reward.fit_normalizers(*(tr[c] for c in reward_cols))
    rew_fit = fit(reward, [tr[c] for c in reward_cols], [va[c] for c in reward_cols], train_cfg, "reward", progress,
                  stage_file("reward"), epochs_of("reward"))
    with torch.no_grad():
        rew_pred = reward(te["obs"], te["actions"], te["new_obs"]).mean(0)
    rew_metrics = regression_metrics(rew_pred[:, None], te["rewards"][:, None])
    log(f"reward: {rew_fit.epochs} epochs{_resumed(rew_fit)}, test R^2 {_fmt(rew_metrics['r2_min'])}")

    termination, term_metrics, term_fit = None, None, None
    if data.terminateds.any():
        term_cols = ("obs", "actions", "new_obs", "terminateds")
        termination = build_termination(spec, model_cfg).to(device)
        termination.fit_normalizers(*(tr[c] for c in term_cols))
        term_fit = fit(termination, [tr[c] for c in term_cols], [va[c] for c in term_cols], train_cfg,
                       "termination", progress, stage_file("termination"), epochs_of("termination"))
        with torch.no_grad():
            term_metrics = classification_metrics(termination(te["obs"], te["actions"], te["new_obs"]).mean(0),
                                                  te["terminateds"])
        log(f"termination: {term_fit.epochs} epochs{_resumed(term_fit)}, test accuracy {term_metrics['accuracy']:.4f}")

    metrics: dict[str, Any] = {
        "data": {"transitions": len(data), "episodes": int(len(np.unique(data.eps_id.astype(str)))),
                 "train_rows": len(split.train), "val_rows": len(split.val), "test_rows": len(split.test)},
        "dynamics": dyn_metrics | {"fit": _fit_summary(dyn_fit)},
        "reward": rew_metrics | {"fit": _fit_summary(rew_fit)},
        "termination": None if term_metrics is None else term_metrics | {"fit": _fit_summary(term_fit)},
        "device": str(device),
    }
    return WorldModel(spec, model_cfg, train_cfg, dynamics, reward, termination, metrics=metrics)


def _fit_summary(result: FitResult | None) -> dict[str, Any]:
    assert result is not None
    return {"epochs": result.epochs, "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
            "seconds": round(result.seconds, 3), "val_loss_history": [round(v, 6) for v in result.history],
            "resumed_from": result.resumed_from}


def _resumed(result: FitResult) -> str:
    return f" (resumed after {result.resumed_from})" if result.resumed_from else ""


def _fmt(metric: float | None) -> str:
    """A metric for the log: 4 decimals, or 'n/a' where it is undefined (R^2 of a constant target)."""
    return "n/a" if metric is None else f"{metric:.4f}"
