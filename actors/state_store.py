"""The client side of the agent-state shards (``actors.state``): starting them, and one store that splits
each batch of agents by shard and calls every shard once, in parallel.

Records travel as columns (``AgentRecords``); see ``actors.state`` for what a shard keeps and how long.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any, Awaitable, Callable, Sequence

import ray

from actors.common import NAMESPACE
from actors.records import AgentRecord, AgentRecords
from actors.state import AgentStateShard, StateConfig


def shard_index(agent_id: str, shards: int) -> int:
    """The shard an agent lives on: a stable hash (the same in every process, unlike ``hash``)."""
    return zlib.crc32(agent_id.encode()) % shards


class AgentStateStore:
    """Client of the shards: splits each batch by shard and calls every shard once, in parallel.

    Picklable: pass it to other actors and deployments, which then talk to the same shards.
    """

    def __init__(self, cfg: StateConfig, handles: list[ray.actor.ActorHandle]) -> None:
        self.cfg, self.handles = cfg, handles

    def _calls(self, agent_ids: Sequence[str], items: Sequence[Any],
               submit: Callable[[ray.actor.ActorHandle, list[Any]], Any]) -> tuple[list[list[int]], list[Any]]:
        """``submit(shard, its items)`` for each shard involved, now: (rows of each call, their object refs)."""
        groups: dict[int, list[int]] = {}
        for i, a in enumerate(agent_ids):
            groups.setdefault(shard_index(a, len(self.handles)), []).append(i)
        refs = [submit(self.handles[s], [items[i] for i in rows]) for s, rows in groups.items()]
        return list(groups.values()), refs

    def _puts(self, records: Sequence[AgentRecord]) -> list[Any]:
        return self._calls([r.agent_id for r in records], records, _put)[1]

    @staticmethod
    def _gather(rows: list[list[int]], parts: list[tuple[list[int], AgentRecords]],
                n: int) -> list[AgentRecord | None]:
        out: list[AgentRecord | None] = [None] * n
        for index, (found, records) in zip(rows, parts):
            for i, record in zip(found, records.unpack()):
                out[index[i]] = record
        return out

    async def get(self, agent_ids: Sequence[str]) -> list[AgentRecord | None]:
        """Records of ``agent_ids`` in order (None where unknown)."""
        rows, refs = self._calls(agent_ids, agent_ids, _get)
        return self._gather(rows, list(await asyncio.gather(*refs)), len(agent_ids))

    async def put(self, records: Sequence[AgentRecord]) -> int:
        """Write records; returns how many."""
        return await self.submit_put(records)

    def submit_put(self, records: Sequence[AgentRecord]) -> Awaitable[int]:
        """Submit the write of ``records`` now, so that any call made to the shards after it sees it, and
        return an awaitable of how many were written."""
        return _total(self._puts(records))

    async def reset(self, agent_ids: Sequence[str]) -> int:
        """Forget agents; returns how many were known."""
        _, refs = self._calls(agent_ids, agent_ids, _reset)
        return sum(await asyncio.gather(*refs))

    async def lease(self, writer_id: str, lease_s: float) -> int:
        """Renew ``writer_id``'s writer lease in every shard; returns the most live writers any shard has."""
        return max(await asyncio.gather(*(h.lease.remote(writer_id, lease_s) for h in self.handles)))

    def get_sync(self, agent_ids: Sequence[str]) -> list[AgentRecord | None]:
        rows, refs = self._calls(agent_ids, agent_ids, _get)
        return self._gather(rows, ray.get(refs), len(agent_ids))

    def put_sync(self, records: Sequence[AgentRecord]) -> int:
        return sum(ray.get(self._puts(records)))

    def reset_sync(self, agent_ids: Sequence[str]) -> int:
        _, refs = self._calls(agent_ids, agent_ids, _reset)
        return sum(ray.get(refs))

    def stats(self) -> list[dict[str, Any]]:
        return ray.get([h.stats.remote() for h in self.handles])


async def _total(refs: list[Any]) -> int:
    return sum(await asyncio.gather(*refs))


def _get(shard: ray.actor.ActorHandle, agent_ids: list[str]) -> Any:
    return shard.get.remote(agent_ids)


def _put(shard: ray.actor.ActorHandle, records: list[AgentRecord]) -> Any:
    return shard.put.remote(AgentRecords.pack(records))


def _reset(shard: ray.actor.ActorHandle, agent_ids: list[str]) -> Any:
    return shard.reset.remote(agent_ids)


def start_state_shards(cfg: StateConfig, detached: bool = False, **actor_options: Any) -> AgentStateStore:
    """Create the shard actors (or attach to running ones of the same names) and return their store.

    Shards restart without limit and retry calls that were in flight when they died;
    ``detached`` shards outlive the process that made them (a Serve app's, on a cluster);
    ``actor_options`` go to every shard (e.g. ``resources`` or a scheduling strategy).
    """
    options = dict(namespace=NAMESPACE, lifetime="detached" if detached else None, get_if_exists=True,
                   max_restarts=-1, max_task_retries=-1, num_cpus=0, max_concurrency=1000, **actor_options)
    shard = ray.remote(AgentStateShard)
    handles = [shard.options(name=name, **options).remote(name, cfg.snapshot_uri, cfg.snapshot_interval_s, cfg.ttl_s)
               for name in cfg.shard_names]
    return AgentStateStore(cfg, handles)


def stop_state_shards(store: AgentStateStore) -> None:
    """Kill the shards (their snapshots stay in storage)."""
    for handle in store.handles:
        ray.kill(handle, no_restart=True)
