"""Splitting logged transitions for training: episodes (or floors, or chunks), never rows.

Episodes, not rows, are split into train / validation / test, so no test transition has a neighbour
from the same episode in training; fleet logs are split by floor episode (scene), so robots that
shared a floor stay on one side; runs of a few long episodes are cut into chunks first.

Shapes: ``B`` rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from worldmodel.data.batch import Transitions

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
    """Assign whole episodes to train / validation / test at random (seeded); see ``split_masks``."""
    return Split(*(data.select(mask) for mask in split_masks(data, val_fraction, test_fraction, seed)))


def split_masks(data: Transitions, val_fraction: float, test_fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test rows as (B,) bool masks: whole episodes, or whole floor episodes
    (``scene``) when every row has one and there are at least 3."""
    scenes = data.scene.astype(str)
    by_scene = len(data) > 0 and (scenes != "").all() and len(np.unique(scenes)) >= 3
    eps = scenes if by_scene else data.eps_id.astype(str)
    episodes = np.unique(eps)
    if len(episodes) < 3:
        raise ValueError(f"need at least 3 episodes to split train/validation/test, got {len(episodes)}")
    order = np.random.default_rng(seed).permutation(episodes)
    n_test = max(1, round(test_fraction * len(order)))
    n_val = max(1, round(val_fraction * len(order)))
    test = np.isin(eps, order[:n_test])
    val = np.isin(eps, order[n_test:n_test + n_val])
    return ~(test | val), val, test


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
