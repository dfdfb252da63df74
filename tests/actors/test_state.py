"""Agent-state shards: batched reads and writes, sharding, TTL eviction, snapshot and restore."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray

import actors.state as state_module
from actors.records import AgentRecord, AgentRecords
from actors.state import AgentStateShard, StateConfig
from actors.state_store import AgentStateStore, shard_index, start_state_shards, stop_state_shards
from tests.ray_fixtures import ray_local  # noqa: F401


def _record(agent: str, step: int) -> AgentRecord:
    return AgentRecord(agent_id=agent, eps_id=f"{agent}-e", t=step, model_version="1.0.0", updated=time.time(),
                       request_ids=(f"r{step}",), answer=None, warm_start=np.full((4, 2), step, np.float32),
                       obs=np.arange(6, dtype=np.float32))


@pytest.fixture
def store(ray_local, tmp_path, request):  # noqa: F811
    cfg = StateConfig(shards=3, snapshot_uri=str(tmp_path / "snap"), snapshot_interval_s=0,
                      name=f"state-{request.node.name}")
    s = start_state_shards(cfg)
    yield s
    stop_state_shards(s)


def test_shard_index_is_stable_and_spread() -> None:
    ids = [f"agent-{i}" for i in range(300)]
    counts = np.bincount([shard_index(a, 3) for a in ids], minlength=3)
    assert shard_index("agent-7", 3) == shard_index("agent-7", 3)
    assert counts.min() > 60  # roughly even


def test_batch_roundtrip_in_order(store: AgentStateStore) -> None:
    agents = [f"a{i}" for i in range(20)]
    assert store.put_sync([_record(a, i) for i, a in enumerate(agents)]) == 20
    got = store.get_sync(["missing", *agents[::-1]])
    assert got[0] is None
    assert [r.t for r in got[1:]] == list(range(19, -1, -1))
    np.testing.assert_array_equal(got[1].warm_start, np.full((4, 2), 19, np.float32))
    assert got[1].request_ids == ("r19",)
    assert store.reset_sync(["a0", "a1", "nobody"]) == 2
    assert store.get_sync(["a0", "a2"])[0] is None
    assert sum(s["agents"] for s in store.stats()) == 18
    assert asyncio.run(store.lease("w1", 10.0)) == 1 and asyncio.run(store.lease("w2", 10.0)) == 2


def test_killed_shard_restores_every_acknowledged_write(store: AgentStateStore) -> None:
    agents = [f"k{i}" for i in range(12)]
    store.put_sync([_record(a, 5) for a in agents])
    for handle in store.handles:
        ray.kill(handle, no_restart=False)  # a crash: Ray restarts the actor, which reloads its snapshot
    got = store.get_sync(agents)
    assert all(r is not None and r.t == 5 for r in got)
    assert sum(s["restored"] for s in store.stats()) == 12


def test_periodic_snapshot_bounds_the_loss(ray_local, tmp_path) -> None:  # noqa: F811
    cfg = StateConfig(shards=1, snapshot_uri=str(tmp_path / "snap"), snapshot_interval_s=0.2, name="state-periodic")
    s = start_state_shards(cfg)
    try:
        s.put_sync([_record("old", 1)])
        time.sleep(0.8)  # more than one interval: "old" is in the snapshot
        s.put_sync([_record("new", 2)])
        ray.kill(s.handles[0], no_restart=False)  # at once: "new" may be lost, "old" may not
        assert s.get_sync(["old"])[0].t == 1
    finally:
        stop_state_shards(s)


def test_idle_agents_are_evicted(ray_local) -> None:  # noqa: F811
    s = start_state_shards(StateConfig(shards=1, snapshot_interval_s=0.2, ttl_s=0.3, name="state-ttl"))
    try:
        s.put_sync([_record("idle", 1)])
        assert s.get_sync(["idle"])[0] is not None
        time.sleep(1.0)
        assert s.get_sync(["idle"])[0] is None
    finally:
        stop_state_shards(s)


def test_a_snapshot_of_records_in_another_form_starts_those_agents_fresh(tmp_path) -> None:
    (tmp_path / "s.pkl").write_bytes(pickle.dumps({"old": {"agent_id": "old", "t": 3}, "new": _record("new", 1)}))
    shard = AgentStateShard("s", str(tmp_path), 1.0, 3600.0)
    assert shard.restored == 1 and list(shard.records) == ["new"]


def _load(path: Path) -> dict[str, AgentRecord]:
    return pickle.loads(path.read_bytes())


def test_a_failed_snapshot_is_retried_and_the_loop_keeps_running(tmp_path, monkeypatch) -> None:
    real, failures, broken = state_module.publish_bytes, [], [True]

    def flaky(fs, path, data) -> None:  # the store fails until it is repaired
        if broken[0]:
            failures.append(path)
            raise OSError("disk full")
        real(fs, path, data)

    monkeypatch.setattr(state_module, "publish_bytes", flaky)
    monkeypatch.setattr(state_module, "MAX_RETRY_S", 0.05, raising=False)

    async def main() -> AgentStateShard:
        shard = AgentStateShard("s", str(tmp_path), 0.01, 3600.0)
        await shard.put(AgentRecords.pack([_record("a", 1)]))
        await asyncio.sleep(0.2)
        assert len(failures) >= 2  # retried
        assert shard.dirty and shard.snapshot_error == "OSError: disk full"  # not marked written
        broken[0] = False
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not shard.dirty:
                break
        return shard

    shard = asyncio.run(main())
    assert shard.snapshot_error is None and not shard.dirty and shard.snapshots == 1
    assert list(_load(tmp_path / "s.pkl")) == ["a"]


def test_a_stopped_maintenance_loop_is_restarted_by_the_next_call(tmp_path) -> None:
    async def main() -> None:
        shard = AgentStateShard("s", None, 0.01, 3600.0)
        await shard.get(["a"])
        shard._task.cancel()
        await asyncio.sleep(0)
        await shard.get(["a"])
        assert not shard._task.done()
        shard._task.cancel()

    asyncio.run(main())


def test_snapshots_are_written_off_the_event_loop_one_at_a_time(tmp_path, monkeypatch) -> None:
    real, seen, running = state_module.publish_bytes, [], [0]

    def slow(fs, path, data) -> None:
        running[0] += 1
        seen.append((threading.get_ident(), running[0]))
        time.sleep(0.05)  # an fsync on a slow disk
        real(fs, path, data)
        running[0] -= 1

    monkeypatch.setattr(state_module, "publish_bytes", slow)

    async def main() -> tuple[int, int]:
        shard = AgentStateShard("s", str(tmp_path), 0, 3600.0)  # every write snapshotted before it returns
        ticks = [0]

        async def tick() -> None:
            while True:
                ticks[0] += 1
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(tick())
        counts = await asyncio.gather(*(shard.put(AgentRecords.pack([_record(f"a{i}", i)])) for i in range(8)))
        ticker.cancel()
        assert counts == [1] * 8
        return threading.get_ident(), ticks[0]

    loop_thread, ticks = asyncio.run(main())
    assert seen and all(thread != loop_thread for thread, _ in seen)
    assert max(n for _, n in seen) == 1  # one write in flight at once
    assert len(seen) < 8  # writes waiting behind another are covered by the next one
    assert ticks >= 3  # the loop ran during the writes
    assert sorted(_load(tmp_path / "s.pkl")) == sorted(f"a{i}" for i in range(8))


@pytest.mark.parametrize("content", [b"\x80\x05garbage", b"", pickle.dumps(["not", "a", "dict"])])
def test_an_unreadable_snapshot_is_moved_aside_and_the_shard_starts_empty(tmp_path, content: bytes) -> None:
    (tmp_path / "s.pkl").write_bytes(content)
    shard = AgentStateShard("s", str(tmp_path), 1.0, 3600.0)
    assert shard.restored == 0 and shard.records == {}
    assert not (tmp_path / "s.pkl").exists()
    kept = list(tmp_path.glob("s.pkl.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == content


def test_config_validates() -> None:
    with pytest.raises(ValueError, match="shards"):
        StateConfig(shards=0)
    with pytest.raises(ValueError, match="ttl_s"):
        StateConfig(ttl_s=0)
