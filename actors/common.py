"""What every Ray layer shares: the namespace of named actors, finding one, and the GPU request rule.

Batches of agent records travel between actors as columns (``actors.records.AgentRecords``),
transitions as ``worldmodel.data.Transitions``."""

from __future__ import annotations

import ray
from ray.actor import ActorHandle

NAMESPACE = "fleetwm"
"""Ray namespace of every named actor fleetwm creates (state shards, schedulers, loggers)."""


def gpus_per_worker() -> float:
    """GPUs for one GPU-hungry actor (ensemble worker, learner): 1 when the cluster has one, else 0 (CPU)."""
    return 1.0 if ray.cluster_resources().get("GPU", 0.0) >= 1.0 else 0.0


def find_actor(name: str, *, namespace: str = NAMESPACE) -> ActorHandle | None:
    """The live actor called ``name`` in ``namespace``, or None when there is none."""
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:  # how Ray says there is no such actor
        return None
