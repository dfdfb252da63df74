"""The per-batch path of the fleet endpoint: Ray hops are paid per batch, never per request.

Requests merged by ``@serve.batch`` in the ingress are queued; each cycle takes every request
queued so far (see ``PlanEngine.submit``) and:

1. the agents' records: from the ingress's own copy of what it wrote (``RecordCache``, when it is
   the only ingress replica), else one read from the state shards (one call per shard, in parallel);
2. retries (same agent and ``request_id`` as the record) are answered from the record;
3. each request's observation and reward close the agent's previous transition;
4. one call to the planner deployment plans every agent, warm-started from its record;
5. one write of the new records and one call to the telemetry logger with the closed transitions,
   submitted before the answers go back and finished while they travel;
6. with a shadow version, a background task plans the same batch with it and compares.

Shapes: ``N`` requests in the batch, ``S`` observation, ``A`` action, ``H`` horizon.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.common import send_rows
from actors.state import AgentStateStore, Record
from serving.config import BATCHING
from serving.metrics import ServingMetrics
from serving.schema import PlanRequest

logger = logging.getLogger("ray.serve")

_BUDGET_MARGIN_MS = 4.0
"""Kept back from a request's deadline for the state write and the HTTP answer."""


@dataclass
class ShadowStats:
    """Running comparison of the shadow version against production on the same requests."""

    batches: int = 0
    requests: int = 0
    action_diff_sum: float = 0.0
    errors: dict[str, list[float]] = field(default_factory=lambda: {"production": [0.0, 0], "shadow": [0.0, 0]})

    def summary(self) -> dict[str, Any]:
        mean = {role: (s / n if n else None) for role, (s, n) in self.errors.items()}
        return {"batches": self.batches, "requests": self.requests,
                "mean_action_difference": self.action_diff_sum / self.requests if self.requests else None,
                "mean_prediction_error": mean}


class RecordCache:
    """The records this ingress replica wrote, so the next batch of the same agents reads none from the shards.

    Under load a read from the shards waits its turn for CPU in two more processes, and it was a
    third of each cycle. This copy is exact only while this replica is the one writer of its agents'
    records, which holds with one ingress replica (``FleetIngress`` decides); the shards stay the
    durable copy, written every batch as before, and a restarted replica starts empty and reads them.
    Agents idle for ``ttl_s`` (the shards' eviction age) are dropped here too. While a redeploy runs
    an old and a new replica side by side, an agent served by both in turn may be planned once from
    a record a step old; a Serve config that sets the ingress's replica count itself must keep
    ``ingress_autoscaling.max_replicas`` in step with it.
    """

    SWEEP_S = 60.0
    """Seconds between scans for idle agents."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.records: dict[str, Record] = {}
        self._swept = time.monotonic()

    def get(self, agent_ids: list[str]) -> list[Record | None]:
        """The records of ``agent_ids``, None for those not here or idle past the TTL (as the shards evict)."""
        cutoff = time.time() - self.ttl_s
        found = [self.records.get(a) for a in agent_ids]
        return [r if r is not None and r.get("updated", 0.0) >= cutoff else None for r in found]

    def put(self, records: list[Record]) -> None:
        self.records.update((r["agent_id"], r) for r in records)
        if time.monotonic() - self._swept > self.SWEEP_S:  # the memory of agents that went away
            self._swept = time.monotonic()
            cutoff = time.time() - self.ttl_s
            for agent in [a for a, r in self.records.items() if r.get("updated", 0.0) < cutoff]:
                del self.records[agent]

    def drop(self, agent_ids: list[str]) -> int:
        """Forget agents; returns how many were here."""
        return sum(self.records.pop(a, None) is not None for a in agent_ids)


class PlanEngine:
    """Runs batches of plan requests against the planner deployment, the state shards and the logger."""

    def __init__(self, planner: Any, store: AgentStateStore, telemetry: Any | None, shadow: Any | None,
                 metrics: ServingMetrics, default_deadline_ms: float | None, cache: RecordCache | None = None) -> None:
        self.planner, self.store, self.telemetry, self.shadow = planner, store, telemetry, shadow
        self.cache = cache
        self.metrics, self.default_deadline_ms = metrics, default_deadline_ms
        self.shadow_stats = ShadowStats()
        self.batches = self.requests = self.largest_batch = 0
        self._background: set[asyncio.Task[None]] = set()
        self.max_batch = int(BATCHING["max_batch_size"])  # per planner call; the ingress's reconfigure sets it
        self._served_version: str | None = None
        self._queue: asyncio.Queue[tuple[PlanRequest, float, asyncio.Future[dict[str, Any]]]] = asyncio.Queue()
        self._cycler: asyncio.Task[None] | None = None

    async def submit(self, requests: list[PlanRequest], arrived: list[float]) -> list[dict[str, Any]]:
        """Queue requests for the next cycle and wait for their answers (in order).

        ``@serve.batch`` forms its next batch while the previous one is still being planned and
        would queue it, small, behind that one. Here every cycle takes *all* requests queued
        while the previous cycle ran: under load, batches grow until a cycle keeps up with the
        arrival rate, and each cycle pays the Ray hops once.
        """
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in requests]
        for item in zip(requests, arrived, futures):
            self._queue.put_nowait(item)
        if self._cycler is None or self._cycler.done():
            self._cycler = loop.create_task(self._cycle())
        return list(await asyncio.gather(*futures))

    async def _cycle(self) -> None:
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty() and len(items) < self.max_batch:
                items.append(self._queue.get_nowait())
            try:
                answers = await self.run([r for r, _, _ in items], [a for _, a, _ in items])
            except Exception as err:  # every waiter of this cycle gets the error; the loop goes on
                for _, _, future in items:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, _, future), answer in zip(items, answers):
                if not future.done():
                    future.set_result(answer)

    async def run(self, requests: list[PlanRequest], arrived: list[float]) -> list[dict[str, Any]]:
        """Answer a batch in order. An agent that appears twice is answered in two passes, in order."""
        seen: set[str] = set()
        first = [i for i, r in enumerate(requests) if not (r.agent_id in seen or seen.add(r.agent_id))]
        # Counted per pass, so each request once: the second pass counts its own.
        self.batches += 1
        self.requests += len(first)
        self.largest_batch = max(self.largest_batch, len(first))
        taken = set(first)
        later = [i for i in range(len(requests)) if i not in taken]
        answers: list[dict[str, Any] | None] = [None] * len(requests)
        for i, answer in zip(first, await self._run_unique([requests[i] for i in first], [arrived[i] for i in first])):
            answers[i] = answer
        if later:
            rest = await self.run([requests[i] for i in later], [arrived[i] for i in later])
            for i, answer in zip(later, rest):
                answers[i] = answer
        return answers  # type: ignore[return-value]

    async def _run_unique(self, requests: list[PlanRequest], arrived: list[float]) -> list[dict[str, Any]]:
        records = await self._read([r.agent_id for r in requests])
        answers: list[dict[str, Any] | None] = [None] * len(requests)
        todo = []
        for i, (req, rec) in enumerate(zip(requests, records)):
            if rec is not None and req.request_id is not None and rec.get("request_id") == req.request_id:
                answers[i] = {**rec["response"], "replayed": True}  # a retry: same answer, nothing logged
            else:
                todo.append(i)
        if len(todo) < len(requests):
            self.metrics.replays.inc(len(requests) - len(todo))
        if todo:
            fresh = await self._plan([requests[i] for i in todo], [records[i] for i in todo],
                                     [arrived[i] for i in todo])
            for i, answer in zip(todo, fresh):
                answers[i] = answer
        return answers  # type: ignore[return-value]

    async def _read(self, agent_ids: list[str]) -> list[Record | None]:
        """The agents' records: cached ones from the cache, the rest in one read from the shards."""
        if self.cache is None:
            return await self.store.get(agent_ids)
        records = self.cache.get(agent_ids)
        missing = [i for i, r in enumerate(records) if r is None]
        if missing:
            fetched = await self.store.get([agent_ids[i] for i in missing])
            for i, record in zip(missing, fetched):
                records[i] = record
            self.cache.put([r for r in fetched if r is not None])
        return records

    async def reset(self, agent_ids: list[str]) -> int:
        """Forget agents (their next request starts fresh); returns how many were known (for one agent:
        whether it was)."""
        cached = self.cache.drop(agent_ids) if self.cache is not None else 0
        return max(await self.store.reset(agent_ids), cached)

    async def _plan(self, requests: list[PlanRequest], records: list[Record | None],
                    arrived: list[float]) -> list[dict[str, Any]]:
        n = len(requests)
        obs = np.asarray([r.observation for r in requests], np.float32)  # (N, S)
        warm = self._stacked(records, "warm")  # (N, H, A) or None
        hidden = self._stacked(records, "hidden")  # (N, Hd) for recurrent models, else None
        objectives = [(r.objective.name if r.objective else "learned") for r in requests]
        zones = self._zones(requests)
        batch = {"obs": obs, "warm": warm, "objectives": objectives, "zones": zones,
                 "budget_ms": self._budget_ms(requests, arrived), "hidden": hidden}
        result = await self.planner.plan.remote(**batch)
        version = result["model_version"]

        transitions, errors, records_out, answers = [], [], [], []
        now = time.time()
        for i, (req, rec) in enumerate(zip(requests, records)):
            continuing = rec is not None and rec.get("obs") is not None
            if continuing and req.reward is not None:
                transitions.append({"obs": rec["obs"], "action": rec["action"], "reward": req.reward,
                                    "new_obs": obs[i], "terminated": req.done, "truncated": req.truncated,
                                    "eps_id": rec["eps_id"], "agent_id": req.agent_id, "t": rec["t"],
                                    "model_version": rec["model_version"]})
            if continuing and rec.get("predicted") is not None:
                errors.append((rec["model_version"], float(np.linalg.norm(obs[i] - rec["predicted"]))))
            answer = {"action": result["actions"][i].tolist(), "model_version": version,
                      "plan_id": uuid.uuid4().hex, "uncertainty": float(result["uncertainty"][i]),
                      "fallback": bool(result["fallback"][i]),
                      "trajectory": result["trajectory"][i].tolist() if req.return_trajectory else None,
                      "replayed": False}
            answers.append(answer)
            ended = req.done or req.truncated
            records_out.append({
                "agent_id": req.agent_id, "request_id": req.request_id, "response": answer,
                # Copies of the batch's rows: a kept record must not keep its whole batch alive.
                "model_version": version, "warm": None if ended else result["warm"][i].copy(),
                "hidden": None if ended or result["hidden"] is None else result["hidden"][i].copy(),
                # After the episode's last observation the next request starts a new episode.
                "obs": None if ended else obs[i].copy(), "action": None if ended else result["actions"][i].copy(),
                "predicted": None if ended else result["trajectory"][i, 1].copy(),
                "eps_id": rec["eps_id"] if continuing else f"{req.agent_id}-{uuid.uuid4().hex[:12]}",
                "t": rec["t"] + 1 if continuing else 0, "updated": now})
        # The writes are submitted now, before anything else is sent to the shards, and finish while the
        # answers travel back: a retry of one of these requests, in this batch's second pass or a later
        # cycle, reaches the shard after this write (calls from one process to one actor run in
        # submission order), so it finds its answer; the logger drops repeats by (episode, step).
        writes = [self.store.submit_put(records_out)]
        if self.telemetry is not None and transitions:
            writes.append(send_rows(self.telemetry, "log", transitions))  # as columns where it takes them
        self._spawn(self._written(writes, len(records_out), len(transitions)))
        if self.cache is not None:  # before a second pass of this batch reads them
            self.cache.put(records_out)
        self._observe(n, version, result, errors, len(transitions))
        if self.shadow is not None:
            self._spawn(self._compare_shadow(batch, result["actions"], transitions))
        return answers

    def stats(self) -> dict[str, Any]:
        """Batches run by this replica: how well concurrent requests were merged."""
        return {"batches": self.batches, "requests": self.requests, "largest_batch": self.largest_batch,
                "mean_batch": self.requests / self.batches if self.batches else None}

    @staticmethod
    def _stacked(records: list[Record | None], key: str) -> np.ndarray | None:
        """Per-agent arrays under ``key`` stacked (N, ...), NaN rows where an agent has none; None when
        nobody has one, or their shapes differ (the horizon or model changed between versions)."""
        arrays = [r.get(key) if r is not None else None for r in records]
        shapes = {x.shape for x in arrays if x is not None}
        if len(shapes) != 1:
            return None
        shape = shapes.pop()
        return np.stack([x if x is not None else np.full(shape, np.nan, np.float32) for x in arrays])

    @staticmethod
    def _zones(requests: list[PlanRequest]) -> np.ndarray | None:
        counts = [len(r.objective.no_fly_zones) if r.objective else 0 for r in requests]
        if max(counts) == 0:
            return None
        zones = np.zeros((len(requests), max(counts), 3), np.float32)  # radius 0 pads
        for i, r in enumerate(requests):
            if counts[i]:
                zones[i, :counts[i]] = np.asarray(r.objective.no_fly_zones, np.float32)  # type: ignore[union-attr]
        return zones

    def _budget_ms(self, requests: list[PlanRequest], arrived: list[float]) -> float | None:
        deadlines = [r.deadline_ms or self.default_deadline_ms for r in requests]
        if all(d is None for d in deadlines):
            return None
        now = time.monotonic()
        left = [d - (now - a) * 1000 for d, a in zip(deadlines, arrived) if d is not None]
        return max(min(left) - _BUDGET_MARGIN_MS, 0.01)

    def _observe(self, n: int, version: str, result: dict[str, Any], errors: list[tuple[str, float]],
                 logged: int) -> None:
        m = self.metrics
        tags = {"model_version": version}
        m.batch_size.observe(n)
        m.plans.inc(n, tags=tags)
        fallbacks = int(np.sum(result["fallback"]))
        if fallbacks:
            m.fallbacks.inc(fallbacks, tags=tags)
        m.disagreement.set(float(np.mean(result["uncertainty"])), tags=tags)
        if version != self._served_version:  # the gauge names the served version; the old one drops to 0
            if self._served_version is not None:
                m.version.set(0, tags={"model_version": self._served_version, "role": "production"})
            m.version.set(1, tags={"model_version": version, "role": "production"})
            self._served_version = version
        by_version: dict[str, list[float]] = {}
        for v, e in errors:  # one observation per batch and version, as the shadow's
            by_version.setdefault(v, []).append(e)
        for v, es in by_version.items():
            m.prediction_error.observe(sum(es) / len(es), tags={"model_version": v, "role": "production"})
        if logged:
            m.logged.inc(logged)

    @staticmethod
    async def _written(writes: list[Any], records: int, transitions: int) -> None:
        try:
            await asyncio.gather(*writes)
        except Exception as err:  # the shards and the logger retry on restart; say what was lost if not
            logger.error("writing %d agent records / %d transitions failed: %s", records, transitions, err)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _compare_shadow(self, batch: dict[str, Any], prod_actions: np.ndarray,
                              transitions: list[dict[str, Any]]) -> None:
        """Plan the batch with the shadow version and score both on the closed transitions; never answers."""
        try:
            calls = [self.shadow.plan.remote(**batch)]
            if transitions:
                scored = (np.stack([t["obs"] for t in transitions]), np.stack([t["action"] for t in transitions]),
                          np.stack([t["new_obs"] for t in transitions]))
                calls += [self.planner.score.remote(*scored), self.shadow.score.remote(*scored)]
            out = await asyncio.gather(*calls)
        except Exception as err:  # the shadow must never affect answers; its failures are reported
            logger.warning("shadow comparison failed: %s", err)
            return
        stats = self.shadow_stats
        diff = np.abs(out[0]["actions"] - prod_actions).mean(1)
        stats.batches += 1
        stats.requests += len(diff)
        stats.action_diff_sum += float(diff.sum())
        self.metrics.shadow_action_diff.set(float(diff.mean()))
        for role, scored in zip(("production", "shadow"), out[1:]):
            stats.errors[role][0] += float(scored["errors"].sum())
            stats.errors[role][1] += len(scored["errors"])
            if role == "shadow":  # production's is recorded when its batch is answered
                self.metrics.prediction_error.observe(scored["mean_error"],
                                                      tags={"model_version": scored["model_version"], "role": role})
