"""Node loss on a multi-node cluster (head + worker nodes on this machine, ray.cluster_utils.Cluster).

Removing the node that holds a state shard loses at most the updates of the last
snapshot interval, and the shard carries on on another node; removing the node a
learner trains on loses at most the epoch in progress, and training resumes elsewhere.
"""

from __future__ import annotations

import os
import time
from typing import Iterator

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

from actors.common import NAMESPACE
from actors.records import AgentRecord
from actors.state import StateConfig
from actors.state_store import start_state_shards, stop_state_shards
from learners.learner import start_learner
from tests.worldmodel.conftest import TINY_MODEL, TINY_TRAIN
from worldmodel.data import write_transitions
from worldmodel.envs.collect import collect
from worldmodel.registry import ModelRegistry

pytestmark = pytest.mark.slow

# Node death is noticed after health_check_period_ms * failure_threshold: keep it short here.
_SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                  "health_check_initial_delay_ms": 0}


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Cluster, dict[str, object]]]:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 128 * 2**20,
                                                       "_system_config": _SYSTEM_CONFIG})
    # Only the workers advertise "worker": actors asking for it never land on the head, whose loss
    # would end the cluster rather than test recovery.
    workers = {name: c.add_node(num_cpus=2, resources={"worker": 100}, object_store_memory=128 * 2**20)
               for name in ("a", "b")}
    c.wait_for_nodes()
    ray.init(address=c.address, namespace=NAMESPACE, log_to_driver=False)
    yield c, workers
    ray.shutdown()
    c.shutdown()


def _node_of(node_id: str, workers: dict[str, object]) -> object:
    return next(w for w in workers.values() if w.node_id == node_id)  # type: ignore[attr-defined]


def _record(agent_id: str, t: int, warm_start: np.ndarray | None = None) -> AgentRecord:
    return AgentRecord(agent_id=agent_id, eps_id="e", t=t, model_version="1", updated=time.time(),
                       request_ids=(), answer=None, warm_start=warm_start)


def test_removing_a_shards_node_loses_at_most_the_snapshot_interval(cluster, tmp_path) -> None:
    c, workers = cluster
    interval = 0.3
    cfg = StateConfig(shards=1, snapshot_uri=str(tmp_path / "snap"), snapshot_interval_s=interval,
                      name="multinode-state")
    store = start_state_shards(cfg, resources={"worker": 1})
    try:
        host = _node_of(store.stats()[0]["node_id"], workers)
        old = [_record(f"old-{i}", i, np.full((3, 2), i, np.float32)) for i in range(50)]
        store.put_sync(old)
        time.sleep(interval * 3)  # older than the snapshot interval: must survive
        store.put_sync([_record("fresh", 0)])  # within the interval: may be lost (documented)
        c.remove_node(host)

        got = store.get_sync([r.agent_id for r in old])  # retried until the shard is back
        assert [r.t for r in got] == list(range(50))
        after = store.stats()[0]
        assert after["node_id"] != host.node_id and after["restored"] >= 50
        store.put_sync([_record("next", 1)])  # the work continues on the other node
        assert store.get_sync(["next"])[0].t == 1
    finally:
        stop_state_shards(store)


def test_removing_the_learners_node_resumes_training_on_another(cluster, tmp_path) -> None:
    c, workers = cluster
    workers["c"] = c.add_node(num_cpus=2, resources={"worker": 100}, object_store_memory=128 * 2**20)
    c.wait_for_nodes()
    logs, registry_uri, checkpoints = str(tmp_path / "logs"), str(tmp_path / "registry"), tmp_path / "ckpt"
    write_transitions(logs, collect("Nav2D-v0", episodes=12, seed=0), env_id="Nav2D-v0")
    learner = start_learner(checkpoint_root=str(checkpoints), resources={"worker": 1})
    alive = {k: w for k, w in workers.items() if w in c.worker_nodes}
    host = _node_of(ray.get(learner.node_id.remote()), alive)
    train = {**TINY_TRAIN.to_dict(), "epochs": 40, "patience": 40}
    model = {f: getattr(TINY_MODEL, f) for f in ("ensemble_size", "hidden", "layers", "reward_hidden",
                                                "reward_layers")}
    pending = learner.retrain.remote(logs, registry_uri, model_cfg=model, train_cfg=train, run_id="node-loss")
    deadline = time.monotonic() + 120
    while not (checkpoints / "node-loss" / "dynamics.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    c.remove_node(host)  # mid-training, with at least one epoch checkpointed

    result = ray.get(pending, timeout=240)
    assert result["resumed"] and result["resumed_from"]["dynamics"] > 0
    assert ray.get(learner.node_id.remote()) != host.node_id
    assert [v.version for v in ModelRegistry(registry_uri).versions()] == [result["version"]]
