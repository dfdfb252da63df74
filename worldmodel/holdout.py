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

from worldmodel.data.batch import Transitions
from worldmodel.model import WorldModel
from worldmodel.recurrent import RecurrentDynamics
from worldmodel.training import gather_windows, predict_rows, tensors

_MIN_VAR = 1e-12
"""Below this a column is treated as constant (e.g. a goal that never moves within an episode)."""


def recent_holdout(data: Transitions, fraction: float) -> tuple[Transitions, Transitions]:
    """Split off the episodes that ended last as a holdout, keeping episodes whole.

    Episodes are ordered by their latest timestamp (ties by episode id); the last
    ``max(1, round(fraction * episodes))`` are held out, and at least one is kept for training.

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
    eps = data.eps_id.astype(str)
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


@torch.no_grad()
def holdout_score(model: WorldModel, data: Transitions) -> dict[str, Any]:
    """Normalised one-step errors of ``model`` on ``data``.

    ``dynamics_nmse`` is the mean over state dimensions of MSE(predicted change) / Var(true
    change), i.e. the mean of 1 - R^2 of the change; dimensions whose change never varies are
    left out (None in ``dynamics_nmse_per_dim``). ``reward_nmse`` is MSE / Var(reward) (the
    plain MSE when the reward is constant). A recurrent model is scored on the same
    sequence windows it trains on.

    Args:
        model: a trained world model (on any device).
        data: B held-out transitions with the model's observation and action sizes.

    Returns:
        JSON-friendly: ``score`` (= dynamics_nmse + reward_nmse, lower is better), ``dynamics_nmse``,
        ``dynamics_nmse_per_dim`` (S), ``reward_nmse``, ``rows`` and ``episodes``.

    Raises:
        ValueError: no rows, sizes that differ from the model's, or no state dimension that changes.
    """
    if len(data) == 0:
        raise ValueError("holdout has no rows to score on")
    if (data.obs_dim, data.act_dim) != (model.spec.obs_dim, model.spec.act_dim):
        raise ValueError(f"holdout has obs/action sizes ({data.obs_dim}, {data.act_dim}), the model "
                         f"({model.spec.obs_dim}, {model.spec.act_dim})")
    cols = tensors(data, model.device)
    rows = cols  # (B, *)
    if isinstance(model.dynamics, RecurrentDynamics):
        rows = gather_windows(data, cols, model.train_config.seq_len, "holdout")  # (W, L, *)
    mean, _ = predict_rows(model.dynamics, rows["obs"], rows["actions"]).moments()  # (B, S) or (W*L, S)
    obs, new_obs = rows["obs"].reshape(mean.shape), rows["new_obs"].reshape(mean.shape)
    true_change, error = (new_obs - obs).double(), (mean - new_obs).double()
    var = true_change.var(0, unbiased=False)  # (S,)
    varies = var > _MIN_VAR
    if not varies.any():
        raise ValueError("no state dimension changes on the holdout, so dynamics errors cannot be normalised")
    per_dim = error.square().mean(0) / var.clamp_min(_MIN_VAR)  # (S,)
    dynamics_nmse = per_dim[varies].mean().item()

    rewards = cols["rewards"].double()
    predicted = model.reward(cols["obs"], cols["actions"], cols["new_obs"]).mean(0).double()  # (B,)
    reward_var = rewards.var(unbiased=False)
    reward_mse = (predicted - rewards).square().mean()
    reward_nmse = (reward_mse / reward_var if reward_var > _MIN_VAR else reward_mse).item()
    return {"score": dynamics_nmse + reward_nmse, "dynamics_nmse": dynamics_nmse,
            "dynamics_nmse_per_dim": [p.item() if v else None for p, v in zip(per_dim, varies)],
            "reward_nmse": reward_nmse, "rows": len(data),
            "episodes": int(len(np.unique(data.eps_id.astype(str))))}
