"""Scoring models on the most recent episodes: the comparison that decides a promotion.

A candidate and the production model are scored on the same held-out episodes, the
newest in the logs (the fleet's current behaviour, which neither model trained on).
Errors are normalised by the spread of the true values on that holdout, so the score
reads the same for any environment: 0 is perfect, about 1 per term is "predicts the
mean" (for the dynamics: "predicts no change"). Lower is better.

Shapes: ``B`` rows, ``W`` sequence windows, ``L`` window length, ``S`` state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from worldmodel.config import default_dynamics
from worldmodel.data.batch import Transitions
from worldmodel.fleet_data import layout_for, neighbour_actions
from worldmodel.fleet_dynamics import FleetEnsemble
from worldmodel.model import WorldModel
from worldmodel.recurrent import RecurrentDynamics
from worldmodel.training import gather_windows, predict_rows, tensors

_MIN_VAR = 1e-12
"""Below this a column is treated as constant (e.g. a goal that never moves within an episode)."""
_ROWS_PER_CALL = 8192
"""Rows (or windows) predicted per call: bounds a fleet model's (E, B, M + 1, hidden) activations."""


def recent_holdout(data: Transitions, fraction: float) -> tuple[Transitions, Transitions]:
    """Split off the episodes that ended last as a holdout, keeping episodes whole.

    An episode is a floor episode (``scene``) where rows have one, so the robots of a floor stay
    together, else an ``eps_id``. Episodes are ordered by their latest timestamp (ties by id); the
    last ``max(1, round(fraction * episodes))`` are held out, and at least one is kept for training.

    Args:
        data: B transitions of any number of agents and episodes.
        fraction: share of episodes to hold out, in (0, 1).

    Returns:
        ``(train, holdout)``, together holding every row of ``data`` once.

    Raises:
        ValueError: ``fraction`` outside (0, 1), or fewer than 2 episodes.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    scene = data.scene.astype(str)
    eps = np.where(scene != "", "scene:" + scene, "eps:" + data.eps_id.astype(str))  # prefixes: no clashes
    episodes, inverse = np.unique(eps, return_inverse=True)
    if len(episodes) < 2:
        raise ValueError(f"need at least 2 episodes to hold the most recent out, got {len(episodes)}")
    last = np.full(len(episodes), np.iinfo(np.int64).min)
    np.maximum.at(last, inverse, data.timestamp.astype("datetime64[us]").astype(np.int64))
    order = np.lexsort((episodes, last))  # oldest first; ties by id
    n_holdout = min(max(1, round(fraction * len(episodes))), len(episodes) - 1)
    held = np.zeros(len(episodes), dtype=bool)
    held[order[-n_holdout:]] = True
    mask = held[inverse]
    return data.select(~mask), data.select(mask)


def scored_dims(model: WorldModel) -> slice:
    """The observation dims ``holdout_score`` compares: the physical state on a fleet env (for any model of
    it), else every dim the dynamics predicts."""
    if default_dynamics(model.spec.env_id) == "fleet":
        return layout_for(model.spec.env_id).phys
    return _predicted_dims(model)


def _predicted_dims(model: WorldModel) -> slice:
    """The observation dims the dynamics predicts: a fleet model's physical state, else all."""
    return model.dynamics.layout.phys if isinstance(model.dynamics, FleetEnsemble) else slice(0, model.spec.obs_dim)


@torch.no_grad()
def holdout_score(model: WorldModel, data: Transitions) -> dict[str, Any]:
    """Normalised one-step errors of ``model`` on ``data``.

    ``dynamics_nmse`` is the mean over the scored dimensions (``scored_dims``) of MSE(predicted
    change) / Var(true change), i.e. the mean of 1 - R^2 of the change; dimensions whose change never
    varies are left out (None in ``dynamics_nmse_per_dim``, as are the dims not scored).
    ``reward_nmse`` is MSE / Var(reward) (the plain MSE when the reward is constant). A recurrent model
    is scored on the same sequence windows it trains on; a fleet model reads each row's neighbours'
    actions at the same tick (``neighbour_actions``), as it trains.

    Args:
        model: a trained world model (on any device).
        data: B held-out transitions with the model's observation and action sizes.

    Returns:
        JSON-friendly: ``score`` (= dynamics_nmse + reward_nmse, lower is better), ``dynamics_nmse``,
        ``dynamics_nmse_per_dim`` (S), ``dims`` (the scored dims), ``reward_nmse``, ``rows`` and ``episodes``.

    Raises:
        ValueError: no rows, sizes that differ from the model's, or no scored dimension that changes.
    """
    if len(data) == 0:
        raise ValueError("holdout has no rows to score on")
    if (data.obs_dim, data.act_dim) != (model.spec.obs_dim, model.spec.act_dim):
        raise ValueError(f"holdout has obs/action sizes ({data.obs_dim}, {data.act_dim}), the model "
                         f"({model.spec.obs_dim}, {model.spec.act_dim})")
    cols = tensors(data, model.device)
    dims = scored_dims(model)
    mean, obs, new_obs = _predicted(model, data, cols, dims)  # (B, D) each, or (W*L, D)
    true_change, error = (new_obs - obs).double(), (mean - new_obs).double()
    var = true_change.var(0, unbiased=False)  # (D,)
    varies = var > _MIN_VAR
    if not varies.any():
        raise ValueError("no state dimension changes on the holdout, so dynamics errors cannot be normalised")
    per_dim = error.square().mean(0) / var.clamp_min(_MIN_VAR)  # (D,)
    dynamics_nmse = per_dim[varies].mean().item()
    scored = list(range(model.spec.obs_dim)[dims])
    per_dim_all: list[float | None] = [None] * model.spec.obs_dim
    for i, p, v in zip(scored, per_dim.tolist(), varies.tolist()):
        per_dim_all[i] = p if v else None

    rewards = cols["rewards"].double()
    predicted = model.reward(cols["obs"], cols["actions"], cols["new_obs"]).mean(0).double()  # (B,)
    reward_var = rewards.var(unbiased=False)
    reward_mse = (predicted - rewards).square().mean()
    reward_nmse = (reward_mse / reward_var if reward_var > _MIN_VAR else reward_mse).item()
    return {"score": dynamics_nmse + reward_nmse, "dynamics_nmse": dynamics_nmse,
            "dynamics_nmse_per_dim": per_dim_all, "dims": scored, "reward_nmse": reward_nmse, "rows": len(data),
            "episodes": int(len(np.unique(data.eps_id.astype(str))))}


def _predicted(model: WorldModel, data: Transitions, cols: dict[str, torch.Tensor],
               dims: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dynamics' mean next state, the state and the true next state on ``dims``: (B, D) each
    (rows of the windows (W*L, D) for a recurrent model)."""
    rows = cols
    if isinstance(model.dynamics, RecurrentDynamics):
        rows = gather_windows(data, cols, model.train_config.seq_len, "holdout")  # (W, L, *)
    inputs = [rows["obs"], rows["actions"]]
    if isinstance(model.dynamics, FleetEnsemble):  # what the robot in each slot did at the same tick
        neighbours = neighbour_actions(data, model.dynamics.layout)  # (B, M, A)
        inputs.append(torch.as_tensor(neighbours, device=model.device))
    mean = torch.cat([predict_rows(model.dynamics, *(x[lo:lo + _ROWS_PER_CALL] for x in inputs)).moments()[0]
                      for lo in range(0, len(inputs[0]), _ROWS_PER_CALL)])  # (B, P | S)
    flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731  windows (W, L, S) -> rows (W*L, S)
    own = range(model.spec.obs_dim)[_predicted_dims(model)]  # the dims ``mean`` holds
    columns = [own.index(i) for i in range(model.spec.obs_dim)[dims]]  # each scored dim's column of ``mean``
    return mean[:, columns], flat(rows["obs"])[:, dims], flat(rows["new_obs"])[:, dims]
