"""Training a world model from logged transitions: split, fit, calibrate, evaluate.

Episodes, not rows, are split into train / validation / test, so no test
transition has a neighbour from the same episode in training; fleet logs are split
by floor episode (scene), so robots that shared a floor stay on one side. Validation data
drives early stopping and variance calibration; the reported metrics come from
the test episodes alone.

Shapes: ``B`` rows, ``W`` sequence windows, ``L`` window length, ``S`` state, ``A`` action, ``M`` slots.
"""

from __future__ import annotations

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
from worldmodel.fleet_data import layout_for, neighbour_actions
from worldmodel.fleet_dynamics import FleetEnsemble
from worldmodel.metrics import classification_metrics, fmt_metric, regression_metrics
from worldmodel.model import WorldModel, build_dynamics, build_reward, build_termination
from worldmodel.recurrent import RecurrentDynamics
from worldmodel.splits import Split, split_masks

FITS = ("dynamics", "reward", "termination")
"""The fits of one training run, in order; each checkpoints to ``<fit>.pt`` and reports in ``metrics[<fit>]``."""
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


@dataclass(frozen=True)
class Fitting:
    """How every stage of one training run fits: its settings, and where it checkpoints and reports."""

    cfg: TrainConfig
    device: torch.device
    progress: bool
    checkpoint_dir: Path | None
    """Each stage checkpoints to ``<stage>.pt`` here; None for no checkpoints."""
    on_epoch: Callable[[str, int, float], None] | None

    def fit(self, model: torch.nn.Module, stage: str, cols: tuple[str, ...], train: dict[str, torch.Tensor],
            val: dict[str, torch.Tensor]) -> FitResult:
        """Fit ``model``'s normalizers, then the model, on the ``cols`` of ``train``, stopping on ``val``."""
        model.fit_normalizers(*(train[c] for c in cols))
        checkpoint = None if self.checkpoint_dir is None else self.checkpoint_dir / f"{stage}.pt"
        on_epoch = None if self.on_epoch is None else functools.partial(self.on_epoch, stage)
        return fit(model, [train[c] for c in cols], [val[c] for c in cols], self.cfg, stage, self.progress,
                   checkpoint, on_epoch)


@dataclass(frozen=True)
class Stage:
    """One fitted model of the run, its fit and its held-out test metrics."""

    model: torch.nn.Module
    fit: FitResult
    metrics: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """The test metrics with the fit's summary under ``fit``."""
        f = self.fit
        return self.metrics | {"fit": {
            "epochs": f.epochs, "best_epoch": f.best_epoch, "best_val_loss": f.best_val_loss,
            "seconds": round(f.seconds, 3), "val_loss_history": [round(v, 6) for v in f.history],
            "resumed_from": f.resumed_from}}

    def line(self, stage: str, label: str, key: str) -> str:
        """One log line: the stage, its epochs and its headline test metric ``metrics[key]``, named ``label``."""
        resumed = f" (resumed after {self.fit.resumed_from})" if self.fit.resumed_from else ""
        return f"{stage}: {self.fit.epochs} epochs{resumed}, test {label} {fmt_metric(self.metrics[key])}"


@torch.no_grad()
def predict_rows(model: torch.nn.Module, obs: torch.Tensor, actions: torch.Tensor,
                 *extra: torch.Tensor) -> Prediction:
    """One-step predictions for rows (B, *) or, for a recurrent model, windows (W, L, *) -> rows (W*L, S);
    ``extra`` inputs go to the model after the actions (a ``FleetEnsemble``'s neighbour actions (B, M, A))."""
    if not isinstance(model, RecurrentDynamics):
        return model(obs, actions, *extra)
    h = model.initial_state(obs.shape[0])
    means, variances = [], []
    for t in range(obs.shape[1]):
        h, pred = model.step(h, obs[:, t], actions[:, t])
        means.append(pred.mean)
        variances.append(pred.var)
    return Prediction(torch.stack(means, 2).flatten(1, 2), torch.stack(variances, 2).flatten(1, 2))


def predicted_dims(model: torch.nn.Module) -> slice:
    """The observation dims a dynamics model predicts: the physical state for a ``FleetEnsemble``, else all."""
    return model.layout.phys if isinstance(model, FleetEnsemble) else slice(0, model.obs_dim)


def _dynamics_stage(spec: SpaceSpec, model_cfg: ModelConfig, split: Split, fitting: Fitting,
                    neighbours: dict[str, np.ndarray] | None) -> Stage:
    """Fit the dynamics, calibrate its variance on validation, and score it on test (R^2 of the new obs, on
    the dims it predicts: ``metrics["dims"]``). ``neighbours``: each split's neighbour actions (B, M, A),
    for a fleet model."""
    dynamics = build_dynamics(spec, model_cfg).to(fitting.device)
    parts = {name: tensors(getattr(split, name), fitting.device) for name in ("train", "val", "test")}
    cols: tuple[str, ...] = ("obs", "actions", "new_obs")
    if isinstance(dynamics, RecurrentDynamics):  # a recurrent model reads sequence windows (W, L, *)
        parts = {name: gather_windows(getattr(split, name), part, fitting.cfg.seq_len, f"the {name} split")
                 for name, part in parts.items()}
    if isinstance(dynamics, FleetEnsemble):  # reads what the robot in each slot did at the same tick
        assert neighbours is not None
        for name, part in parts.items():
            part["neighbour_actions"] = torch.as_tensor(neighbours[name], device=fitting.device)
        cols = ("obs", "actions", "neighbour_actions", "new_obs")
    result = fitting.fit(dynamics, "dynamics", cols, parts["train"], parts["val"])
    val, test, dims = parts["val"], parts["test"], predicted_dims(dynamics)
    inputs = lambda part: [part[c] for c in cols[:-1]]  # noqa: E731
    flat = lambda x: x.reshape(-1, x.shape[-1])[:, dims]  # noqa: E731  (W, L, S) windows -> (W*L, D) rows
    has_variance = dynamics.probabilistic or dynamics.members > 1
    if has_variance:
        dynamics.var_scale.copy_(fit_var_scale(predict_rows(dynamics, *inputs(val)), flat(val["new_obs"])))
    mean, var = predict_rows(dynamics, *inputs(test)).moments()
    metrics = regression_metrics(mean, flat(test["new_obs"]), var if has_variance else None, base=flat(test["obs"]))
    return Stage(dynamics, result, metrics | {"dims": list(range(spec.obs_dim))[dims]})


def reward_stage(spec: SpaceSpec, model_cfg: ModelConfig, rows: dict[str, dict[str, torch.Tensor]],
                 fitting: Fitting) -> Stage:
    """Fit the reward model on ``rows`` (split name -> ``tensors``) and score it on test (R^2); with a world
    model's dynamics (``train_world_model``) or alone (``worldmodel.reward_training``)."""
    reward = build_reward(spec, model_cfg).to(fitting.device)
    result = fitting.fit(reward, "reward", ("obs", "actions", "new_obs", "rewards"), rows["train"], rows["val"])
    te = rows["test"]
    with torch.no_grad():
        pred = reward(te["obs"], te["actions"], te["new_obs"]).mean(0)  # (B,) the members' mean
    return Stage(reward, result, regression_metrics(pred[:, None], te["rewards"][:, None]))


def _termination_stage(spec: SpaceSpec, model_cfg: ModelConfig, rows: dict[str, dict[str, torch.Tensor]],
                       fitting: Fitting) -> Stage:
    """Fit the termination model on ``rows`` (split name -> ``tensors``) and score it on test (accuracy)."""
    termination = build_termination(spec, model_cfg).to(fitting.device)
    result = fitting.fit(termination, "termination", ("obs", "actions", "new_obs", "terminateds"), rows["train"],
                         rows["val"])
    te = rows["test"]
    with torch.no_grad():
        prob = termination(te["obs"], te["actions"], te["new_obs"]).mean(0)  # (B,)
    return Stage(termination, result, classification_metrics(prob, te["terminateds"]))


def seeded_split(data: Transitions, cfg: TrainConfig) -> tuple[tuple[np.ndarray, ...], Split]:
    """Seed torch with ``cfg.seed`` and split ``data`` by episode: the (train, val, test) row masks (B,) and
    the split. Every run that fits on logs starts here, so one seed gives one split and one weight stream."""
    torch.manual_seed(cfg.seed)
    masks = split_masks(data, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    return masks, Split(*(data.select(mask) for mask in masks))


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
    fitting = Fitting(train_cfg, device, progress, None if checkpoint_dir is None else Path(checkpoint_dir), on_epoch)
    # One seed, then the stages in a fixed order: each draws its initial weights and batches from the same stream.
    masks, split = seeded_split(data, train_cfg)
    log(f"split {len(data)} transitions into {len(split.train)} train / {len(split.val)} val / "
        f"{len(split.test)} test rows by episode; training on {device}")
    neighbours = None
    if model_cfg.dynamics == "fleet":  # matched on the whole floor before the split separates robots
        actions = neighbour_actions(data, layout_for(spec.env_id))  # (B, M, A)
        neighbours = {name: actions[mask] for name, mask in zip(("train", "val", "test"), masks)}
    dynamics = _dynamics_stage(spec, model_cfg, split, fitting, neighbours)
    log(dynamics.line("dynamics", "R^2 min", "r2_min"))
    rows = {name: tensors(getattr(split, name), device) for name in ("train", "val", "test")}
    reward = reward_stage(spec, model_cfg, rows, fitting)
    log(reward.line("reward", "R^2", "r2_min"))
    termination = _termination_stage(spec, model_cfg, rows, fitting) if data.terminateds.any() else None
    if termination is not None:
        log(termination.line("termination", "accuracy", "accuracy"))
    metrics: dict[str, Any] = {
        "data": {"transitions": len(data), "episodes": int(len(np.unique(data.eps_id.astype(str)))),
                 "train_rows": len(split.train), "val_rows": len(split.val), "test_rows": len(split.test)},
        "dynamics": dynamics.summary(), "reward": reward.summary(),
        "termination": None if termination is None else termination.summary(),
        "device": str(device),
    }
    return WorldModel(spec, model_cfg, train_cfg, dynamics.model, reward.model,
                      None if termination is None else termination.model, metrics=metrics)

