"""Node loss on a three-node cluster (head + two workers on this machine, ray.cluster_utils.Cluster).

Removing the node that holds a state shard loses at most the updates of the last
snapshot interval, and the shard carries on on another node.
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
from actors.state import StateConfig, start_state_shards, stop_state_shards

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


def test_removing_a_shards_node_loses_at_most_the_snapshot_interval(cluster, tmp_path) -> None:
    c, workers = cluster
    interval = 0.3
    cfg = StateConfig(shards=1, snapshot_uri=str(tmp_path / "snap"), snapshot_interval_s=interval,
                      name="multinode-state")
    store = start_state_shards(cfg, resources={"worker": 1})
    try:
        host = _node_of(store.stats()[0]["node_id"], workers)
        old = [{"agent_id": f"old-{i}", "t": i, "warm": np.full((3, 2), i, np.float32)} for i in range(50)]
        store.put_sync(old)
        time.sleep(interval * 3)  # older than the snapshot interval: must survive
        store.put_sync([{"agent_id": "fresh", "t": 0}])  # within the interval: may be lost (documented)
        c.remove_node(host)

        got = store.get_sync([r["agent_id"] for r in old])  # retried until the shard is back
        assert [r["t"] for r in got] == list(range(50))
        after = store.stats()[0]
        assert after["node_id"] != host.node_id and after["restored"] >= 50
        store.put_sync([{"agent_id": "next", "t": 1}])  # the work continues on the other node
        assert store.get_sync(["next"])[0]["t"] == 1
    finally:
        stop_state_shards(store)
