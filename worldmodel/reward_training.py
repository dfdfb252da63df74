"""Fitting a reward model alone from logged transitions, for the spaces of an existing world model.

The dynamics are not touched: the logs' (s, a, s', r) rows are split by episode exactly as
``worldmodel.training`` splits them (one seed, one split), the reward model is fitted with its loop
(``training.reward_stage``, early-stopped on validation), and its error is reported on the test episodes.

Shapes: ``B`` rows, ``S`` state, ``A`` action.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from worldmodel.config import TrainConfig
from worldmodel.data.batch import Transitions
from worldmodel.device import resolve_device
from worldmodel.envs import SpaceSpec
from worldmodel.reward_artifact import RewardArtifact, RewardConfig
from worldmodel.training import Fitting, reward_stage, seeded_split, tensors


def train_reward_model(
    data: Transitions,
    spec: SpaceSpec,
    cfg: RewardConfig | None = None,
    train_cfg: TrainConfig | None = None,
    *,
    progress: bool = False,
    log: Callable[[str], None] = lambda message: None,
    checkpoint_dir: str | Path | None = None,
) -> RewardArtifact:
    """Fit a reward model r(s, a, s') on ``data`` for ``spec``'s spaces.

    Args:
        data: B logged transitions of ``spec``'s environment.
        spec: the spaces of the world model the reward is for; must match ``data``.
        cfg: the reward network (default: ``RewardConfig()``).
        train_cfg: fitting settings (early-stopped AdamW, seed 0 by default).
        progress: progress bars on stderr.
        log: called with one line when the fit ends.
        checkpoint_dir: the fit checkpoints to ``reward.pt`` here (a rerun resumes it), or None.

    Returns:
        The reward artifact (version "r0.1.0" until registered) with the test metrics in ``metrics``:
        ``metrics["reward"]`` has R^2, ``rmse`` and the fit's summary, ``metrics["data"]`` the split's sizes.

    Raises:
        ValueError: ``data``'s sizes are not ``spec``'s, or it has too few episodes to split.
    """
    cfg, train_cfg = cfg or RewardConfig(), train_cfg or TrainConfig()
    if (data.obs_dim, data.act_dim) != (spec.obs_dim, spec.act_dim):
        raise ValueError(f"the logs have (S, A) = ({data.obs_dim}, {data.act_dim}), but the world model's spaces "
                         f"({spec.env_id or 'its env'}) are ({spec.obs_dim}, {spec.act_dim})")
    device = resolve_device(train_cfg.device)
    _, split = seeded_split(data, train_cfg)
    rows = {name: tensors(getattr(split, name), device) for name in ("train", "val", "test")}
    fitting = Fitting(train_cfg, device, progress, None if checkpoint_dir is None else Path(checkpoint_dir), None)
    stage = reward_stage(spec, cfg.model_config(), rows, fitting)
    log(stage.line("reward", "R^2", "r2_min"))
    metrics: dict[str, Any] = {
        "data": {"transitions": len(data), "episodes": int(len(np.unique(data.eps_id.astype(str)))),
                 "train_rows": len(split.train), "val_rows": len(split.val), "test_rows": len(split.test)},
        "reward": stage.summary(), "device": str(device)}
    return RewardArtifact(spec, cfg, train_cfg, stage.model.cpu().eval(), metrics=metrics)
