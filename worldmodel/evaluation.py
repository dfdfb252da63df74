"""Offline evaluation of a world model on any logs: prediction error and calibration by horizon, reward error.

One-step scores are teacher-forced on every logged row (``distance`` is the served
``prediction_error`` averaged). Multi-step scores roll the model open loop from logged starts
through the logged actions and compare step h = 1..H with what was logged: errors compound
with h, and a calibrated model's intervals widen as fast. Uncertainty is carried by particles:
each member moves P particles, each drawing its next state from that member's calibrated
Gaussian (PETS' TS-inf), so the spread at step h holds the members' disagreement and the noise
compounded over h steps. A deterministic model moves one path per member.

Shapes: ``B`` rows, ``W`` windows, ``H`` horizon, ``E`` members, ``P`` particles, ``S`` state,
``A`` action, ``D`` scored dims.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch

from worldmodel.data.batch import Transitions
from worldmodel.dynamics import Prediction
from worldmodel.evaluation_config import EvalConfig
from worldmodel.fleet_data import neighbour_actions
from worldmodel.fleet_dynamics import FleetEnsemble
from worldmodel.holdout import scored_dims
from worldmodel.metrics import regression_metrics
from worldmodel.model import WorldModel
from worldmodel.recurrent import RecurrentDynamics
from worldmodel.training import gather_windows, predict_rows, predicted_dims, tensors

ROWS_PER_CALL = 16384
"""Rows (particles times windows) predicted per call: bounds the networks' activations on large logs."""
__all__ = ["EvalConfig", "Evaluation", "StepScores", "evaluate", "rollout_windows"]

FLEET_ONE_STEP = ("a fleet model predicts each robot's physical state from its neighbours' logged states and "
                  "actions; an open-loop rollout would need the neighbours' future states too: one-step only")
"""Why a fleet model gets no multi-step scores."""


@dataclass(frozen=True)
class StepScores:
    """Predictions against logged values at one step (one-step, or step h of the rollouts)."""

    rows: int
    """Predictions scored."""
    mse: float
    """Squared error averaged over rows and scored dims."""
    mse_per_dim: list[float]
    """(D,) squared error of each scored dim."""
    distance: float
    """Mean Euclidean distance of the predicted mean from the logged state (the served prediction error)."""
    nll: float | None
    """Gaussian NLL per dim of the logged state under the predicted mean and variance (None: no variance)."""
    coverage_1sigma: float | None
    """Share of logged values within one predicted sigma (0.683 when calibrated; None: no variance)."""
    coverage_2sigma: float | None
    """Share within two sigmas (0.954 when calibrated)."""
    reward_mse: float
    """Squared error of the predicted reward (on the logged transition one-step, the imagined one at step h)."""


@dataclass(frozen=True)
class Evaluation:
    """A model's scores on one set of logs."""

    version: str
    kind: str
    """The dynamics kind (``ModelConfig.dynamics``)."""
    dims: list[int]
    """The observation dims scored: the physical state on a fleet env (for any model of it), else all."""
    rows: int
    episodes: int
    one_step: StepScores
    by_horizon: list[StepScores]
    """Step h of the open-loop rollouts at index h - 1; empty when multi-step was skipped."""
    windows: int
    """Rollouts scored (0 when skipped)."""
    multi_step_skipped: str | None
    """Why there are no multi-step scores, or None."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(model: WorldModel, data: Transitions, cfg: EvalConfig = EvalConfig(),
             progress: Callable[[str], None] = lambda _: None) -> Evaluation:
    """Score ``model`` on the B logged transitions ``data`` (see the module docstring).

    Raises:
        ValueError: no rows, sizes that differ from the model's, or (for a model that rolls out) no
            episode with ``cfg.horizon`` consecutive steps.
    """
    if len(data) == 0:
        raise ValueError("the logs have no rows to score")
    if (data.obs_dim, data.act_dim) != (model.spec.obs_dim, model.spec.act_dim):
        raise ValueError(f"the logs have obs/action sizes ({data.obs_dim}, {data.act_dim}), the model "
                         f"({model.spec.obs_dim}, {model.spec.act_dim})")
    dims = scored_dims(model)  # a fleet env's physical state for any model of it, as promotion compares
    cols = tensors(data, model.device)
    progress(f"one-step: {len(data)} rows")
    one_step = _one_step(model, data, cols, dims)
    by_horizon: list[StepScores] = []
    windows, skipped = 0, FLEET_ONE_STEP if isinstance(model.dynamics, FleetEnsemble) else None
    if skipped is None:
        index = rollout_windows(data, cfg.horizon, cfg.stride or cfg.horizon, cfg.max_windows)
        windows = len(index)
        progress(f"multi-step: {windows} rollouts of {cfg.horizon} steps")
        by_horizon = _multi_step(model, cols, torch.as_tensor(index, device=model.device), dims, cfg)
    return Evaluation(version=model.version, kind=model.model_config.dynamics,
                      dims=list(range(model.spec.obs_dim))[dims], rows=len(data),
                      episodes=int(len(np.unique(data.eps_id.astype(str)))), one_step=one_step,
                      by_horizon=by_horizon, windows=windows, multi_step_skipped=skipped)


def rollout_windows(data: Transitions, horizon: int, stride: int, max_windows: int) -> np.ndarray:
    """Row indices of windows of ``horizon`` consecutive logged steps of one episode: (W, H).

    Steps are consecutive when their agent and episode are the same and ``t`` grows by one (a
    dropped row breaks a run); windows start every ``stride`` steps of a run, and at most ``max_windows``
    of them are kept, spread evenly.

    Raises:
        ValueError: no run of ``horizon`` steps.
    """
    agent, eps = data.agent_id.astype(str), data.eps_id.astype(str)
    order = np.lexsort((data.t, eps, agent))
    agent, eps, t = agent[order], eps[order], data.t[order].astype(np.int64)
    breaks = np.r_[True, (agent[1:] != agent[:-1]) | (eps[1:] != eps[:-1]) | (t[1:] != t[:-1] + 1)]
    starts = np.flatnonzero(breaks)
    lengths = np.diff(np.r_[starts, len(eps)])
    pos = np.arange(len(eps)) - np.repeat(starts, lengths)  # step within its run
    remaining = np.repeat(starts + lengths, lengths) - np.arange(len(eps))
    first = np.flatnonzero((pos % stride == 0) & (remaining >= horizon))
    if len(first) == 0:
        raise ValueError(f"no episode in the logs has {horizon} consecutive steps (the longest has "
                         f"{lengths.max()}); ask for a shorter horizon")
    if len(first) > max_windows:
        first = first[np.unique(np.linspace(0, len(first) - 1, max_windows).round().astype(np.int64))]
    return order[first[:, None] + np.arange(horizon)]


def _has_variance(dynamics: torch.nn.Module) -> bool:
    return bool(dynamics.probabilistic or dynamics.members > 1)


@torch.no_grad()
def _one_step(model: WorldModel, data: Transitions, cols: dict[str, torch.Tensor], dims: slice) -> StepScores:
    """Teacher-forced scores on every row (a recurrent model: its training windows, from a fresh state)."""
    rows = cols
    if isinstance(model.dynamics, RecurrentDynamics):
        rows = gather_windows(data, cols, model.train_config.seq_len, "the logs")  # (W, L, *)
    inputs = [rows["obs"], rows["actions"]]
    if isinstance(model.dynamics, FleetEnsemble):  # what the robot in each slot did at the same tick
        inputs.append(torch.as_tensor(neighbour_actions(data, model.dynamics.layout), device=model.device))
    chunks = [predict_rows(model.dynamics, *(x[lo:lo + ROWS_PER_CALL] for x in inputs)).moments()
              for lo in range(0, len(inputs[0]), ROWS_PER_CALL)]
    own = range(model.spec.obs_dim)[predicted_dims(model.dynamics)]  # the dims the model's predictions hold
    columns = [own.index(i) for i in range(model.spec.obs_dim)[dims]]
    mean, var = (torch.cat([c[i] for c in chunks])[:, columns] for i in range(2))  # (B, D) each
    target = rows["new_obs"].reshape(-1, model.spec.obs_dim)[:, dims]
    reward = torch.cat([model.reward(*(cols[c][lo:lo + ROWS_PER_CALL] for c in ("obs", "actions", "new_obs")))
                        .mean(0) for lo in range(0, len(cols["obs"]), ROWS_PER_CALL)])  # (B,)
    return _scores(mean, var if _has_variance(model.dynamics) else None, target, reward, cols["rewards"])


@torch.no_grad()
def _multi_step(model: WorldModel, cols: dict[str, torch.Tensor], index: torch.Tensor, dims: slice,
                cfg: EvalConfig) -> list[StepScores]:
    """Scores of step 1..H of open-loop rollouts through the windows ``index`` (W, H)."""
    dynamics = model.dynamics
    particles = cfg.particles if dynamics.probabilistic else 1
    generator = torch.Generator(device=model.device).manual_seed(cfg.seed)
    per_call = max(1, ROWS_PER_CALL // (dynamics.members * particles))
    parts = [_rollout(model, cols["obs"][chunk[:, 0]], cols["actions"][chunk], particles, generator)
             for chunk in index.split(per_call)]
    mean, var, reward = (torch.cat([p[i] for p in parts], 1) for i in range(3))  # (H, W, S) x 2, (H, W)
    target, logged = cols["new_obs"][index].transpose(0, 1), cols["rewards"][index].transpose(0, 1)  # (H, W, *)
    has_var = _has_variance(dynamics)
    return [_scores(mean[h][:, dims], var[h][:, dims] if has_var else None, target[h][:, dims], reward[h], logged[h])
            for h in range(index.shape[1])]


def _rollout(model: WorldModel, start: torch.Tensor, actions: torch.Tensor, particles: int,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Open-loop rollouts of W windows.

    Args:
        start: (W, S) logged first states.
        actions: (W, H, A) logged actions.
        particles: P per member.

    Returns:
        The particles' mean and variance of the state after each step, (H, W, S) each, and their
        mean predicted reward of each step, (H, W).
    """
    dynamics, e, (w, h_len, _) = model.dynamics, model.dynamics.members, actions.shape
    step = _RecurrentStep(dynamics, particles * w) if isinstance(dynamics, RecurrentDynamics) else dynamics
    acts = actions.repeat(particles, 1, 1)  # (P*W, H, A), particle-major
    states = start.repeat(particles, 1).expand(e, -1, -1)  # (E, P*W, S)
    # A probabilistic model's particles draw from its Gaussian; a deterministic one follows its means.
    draw: Callable[[Prediction], torch.Tensor] = (
        (lambda p: p.sample(torch.randn(p.mean.shape, generator=generator, device=p.mean.device)))
        if dynamics.probabilistic else (lambda p: p.mean))
    means, variances, rewards = [], [], []
    for h in range(h_len):
        new = draw(step(states, acts[:, h]))  # (E, P*W, S)
        reward = model.reward(states.flatten(0, 1), acts[:, h].repeat(e, 1), new.flatten(0, 1)).mean(0)  # (E*P*W,)
        cloud = new.reshape(e * particles, w, -1)  # (E*P, W, S)
        means.append(cloud.mean(0))
        variances.append(cloud.var(0, unbiased=False))
        rewards.append(reward.reshape(e * particles, w).mean(0))
        states = new
    return torch.stack(means), torch.stack(variances), torch.stack(rewards)


class _RecurrentStep:
    """A GRU ensemble as the rollout steps it: from a fresh hidden state (as it trains on windows), each
    member from its own states (E, B, S) and hidden (E, B, Hd)."""

    def __init__(self, dynamics: RecurrentDynamics, batch: int) -> None:
        self.dynamics, self.h = dynamics, dynamics.split(dynamics.initial_state(batch))

    def __call__(self, obs: torch.Tensor, action: torch.Tensor) -> Prediction:
        self.h, pred = self.dynamics.step_members(self.h, obs, action)
        return pred


def _scores(mean: torch.Tensor, var: torch.Tensor | None, target: torch.Tensor, reward: torch.Tensor,
            logged_reward: torch.Tensor) -> StepScores:
    """``StepScores`` of predicted (B, D) ``mean`` and ``var`` against ``target``, rewards (B,) against logged."""
    metrics = regression_metrics(mean, target, var)
    error = mean.double() - target.double()
    return StepScores(
        rows=len(target), mse=error.square().mean().item(), mse_per_dim=metrics["mse"],
        distance=error.norm(dim=-1).mean().item(), nll=_finite(metrics.get("nll")),
        coverage_1sigma=metrics.get("coverage_1sigma_mean"), coverage_2sigma=metrics.get("coverage_2sigma_mean"),
        reward_mse=(reward.double() - logged_reward.double()).square().mean().item())


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x
