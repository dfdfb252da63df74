"""What every Ray layer shares: the namespace of named actors and the GPU request rule."""

from __future__ import annotations

import ray

NAMESPACE = "fleetwm"
"""Ray namespace of every named actor fleetwm creates (state shards, schedulers, loggers)."""


def gpus_per_worker() -> float:
    """GPUs for one GPU-hungry actor (ensemble worker, learner): 1 when the cluster has one, else 0 (CPU)."""
    return 1.0 if ray.cluster_resources().get("GPU", 0.0) >= 1.0 else 0.0
