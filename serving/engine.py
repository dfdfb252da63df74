"""The per-batch path of the fleet endpoint: Ray hops are paid per batch, never per request.

Requests merged by ``@serve.batch`` in the ingress are queued; each cycle takes every request
queued so far (see ``PlanEngine.submit``) and:

1. reads the agents' records: from its own copy of what it wrote (``RecordCache``, while its writer lease says
   it is the only writer: ``serving.engine_lease``), else one read from the state shards (one
   call per shard, in parallel);
2. answers retries (same agent and ``request_id`` as the record's last) from the record, and refuses
   (409) an older ``request_id`` of the agent: nothing is planned or logged for either;
3. decides which requests close the agent's previous transition (``rows.continuation``): only when the
   server knows both ends and the client reports the action it took (``prev_action``); the others are
   counted by reason (``stats()['unlogged']``);
4. plans every agent in one call to the planner deployment, warm-started from its record when the
   request continues the record's episode (warehouse robots of one site jointly: ``site``); while a live
   A/B test runs (``serving.ab``), the candidate's agents in one call to the candidate deployment, both
   calls at once (``serving.engine_arms``); a failed candidate call is planned again by production;
5. sends the closed transitions to the telemetry sink once, beside the planner calls, then writes the new records
   once (``serving.engine_writes``), both submitted before the answers go back and finished while they
   travel; ``settled`` says when they are durable;
6. with a shadow version, has it plan the same batch in the background and compares (``serving.shadow``);
7. keeps each decision's inputs for ``/v1/explain`` (``serving.explain``: ``explain``, ``explained``).

What each request becomes (its answer, its new record, the transition it closes) is worked out by
the pure functions of ``serving.rows``; this module pays the calls and keeps the lease.

Shapes: ``N`` requests in the batch, ``S`` observation, ``A`` action, ``H`` horizon.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import numpy as np

from actors.records import AgentRecord, PlanAnswer, RecordCache, Rejected
from actors.state_store import AgentStateStore
from learners.settings import DriftSettings
from serving import rows
from serving.ab import LiveAB
from serving.config import BATCHING
from serving.engine_arms import ArmPlanner, Batch
from serving.engine_lease import IDLE_LEAVE_S, WriterLease
from serving.engine_metrics import BatchMetrics
from serving.engine_writes import EngineWrites
from serving.explain import DecisionStore, Explainer, ExplainRequest
from serving.metrics import ServingMetrics
from serving.schema import PlanRequest
from serving.shadow import ShadowComparison, ShadowStats
from serving.sites import SiteGather
from serving.sinks import TelemetrySink
from worldmodel.data import Transitions

logger = logging.getLogger("ray.serve")

Answer = PlanAnswer | Rejected
"""What a request gets: an answer, or a refusal (a retry of a superseded request)."""

_BUDGET_MARGIN_MS = 4.0
"""Kept back from a request's deadline for the state write and the HTTP answer."""
class PlanEngine:
    """Runs batches of plan requests against the planner deployment, the state shards and the telemetry sink."""

    def __init__(self, planner: Any, store: AgentStateStore, telemetry: TelemetrySink | None, shadow: Any | None,
                 metrics: ServingMetrics, default_deadline_ms: float | None, cache: RecordCache | None = None,
                 drift: DriftSettings | None = DriftSettings(), ab: LiveAB | None = None,
                 leave_idle_s: float | None = IDLE_LEAVE_S) -> None:
        """``planner`` and ``shadow`` are planner deployment handles (``shadow`` None: no comparison);
        ``telemetry`` where served transitions go (None: nothing logged); ``cache`` used only while the sole writer;
        ``leave_idle_s``: the writer lease is given up after this long without a batch (None: kept; a stream
        consumer, whose requests another replica may claim, must not wait to join again while it holds some);
        ``drift`` when a rise of the prediction error asks for a retrain (``serving.engine_metrics.DriftFeed``);
        ``ab`` the live A/B test's candidate arm (None: every agent is production's)."""
        self.planner, self.store, self.telemetry, self.cache = planner, store, telemetry, cache
        self.metrics, self.default_deadline_ms = metrics, default_deadline_ms
        self.shadow = ShadowComparison(planner, shadow, metrics) if shadow is not None else None
        self.shadow_stats = self.shadow.stats if self.shadow is not None else ShadowStats()
        """The shadow comparison's running totals (empty without a shadow version)."""
        self.batches = self.requests = self.largest_batch = 0
        self.unlogged: Counter[str] = Counter()
        """Requests whose record's transition was not logged, by reason (``rows.UNLOGGED_REASONS``)."""
        self._background: set[asyncio.Task[None]] = set()
        self.writes = EngineWrites(store, telemetry, self._spawn)
        self.max_batch = int(BATCHING["max_batch_size"])  # per planner call; the ingress's reconfigure sets it
        self.ab = ab
        self._queue: asyncio.Queue[tuple[PlanRequest, float, asyncio.Future[Answer]]] = asyncio.Queue()
        self.sites = SiteGather()
        self._cycler: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_run = time.monotonic()
        self.lease = WriterLease(store, cache, self.writes, self._idle_s, leave_idle_s)
        """The writer lease that decides when ``cache`` is used (``serving.engine_lease``)."""
        self._pass = asyncio.Lock()
        """Held by a pass from its read to its write's submission, and by a reset: a reset landing between
        them would be undone by the write."""
        self.decisions = DecisionStore()
        """The inputs of the decisions served here, for ``explain`` by ``plan_id``."""
        self.explainer = Explainer(planner, self.decisions, self.lease.read)
        self.arms = ArmPlanner(planner, ab, self.shadow, self.decisions, BatchMetrics(metrics, drift),
                               BatchMetrics(metrics, role="candidate"), self._spawn)

    async def submit(self, requests: list[PlanRequest], arrived: list[float]) -> list[Answer]:
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
        self._idle.clear()
        if self._cycler is None or self._cycler.done():
            self._cycler = loop.create_task(self._cycle())
        return list(await asyncio.gather(*futures))

    async def _cycle(self) -> None:
        """Forever: take every request queued so far (up to ``max_batch``; a warehouse site's robots waited for
        briefly, ``serving.sites``) as one batch and answer it."""
        while True:
            if self._queue.empty():
                self._idle.set()
            items = await self.sites.take(self._queue, self.max_batch)  # a warehouse site's robots together
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

    async def until_idle(self) -> None:
        """Return once no cycle is running or queued: a caller that reads its requests in batches (the stream
        consumer) reads then, so one read takes everything that arrived during the cycle."""
        await self._idle.wait()

    async def run(self, requests: list[PlanRequest], arrived: list[float]) -> list[Answer]:
        """Answer a batch in order. An agent that appears twice is answered in two passes, in order."""
        self._last_run = time.monotonic()
        await self.lease.keep()
        seen: set[str] = set()
        first = [i for i, r in enumerate(requests) if not (r.agent_id in seen or seen.add(r.agent_id))]
        # Counted per pass, so each request once: the second pass counts its own.
        self.batches += 1
        self.requests += len(first)
        self.largest_batch = max(self.largest_batch, len(first))
        taken = set(first)
        later = [i for i in range(len(requests)) if i not in taken]
        answers: list[Answer | None] = [None] * len(requests)
        async with self._pass:  # a reset waits for this pass: it must not land between its read and write
            await self.writes.ordered()  # the previous pass's records are sent before this pass reads
            unique = await self._run_unique([requests[i] for i in first], [arrived[i] for i in first])
            # The answers leave once the records are on their way, so the agents' next requests, through
            # any replica, read them (the telemetry call before them is waited for LOG_WAIT_S at most).
            await self.writes.ordered()
        for i, answer in zip(first, unique):
            answers[i] = answer
        if later:
            rest = await self.run([requests[i] for i in later], [arrived[i] for i in later])
            for i, answer in zip(later, rest):
                answers[i] = answer
        return answers  # type: ignore[return-value]

    async def _run_unique(self, requests: list[PlanRequest], arrived: list[float]) -> list[Answer]:
        """Answer requests of distinct agents: known ones from their records, the rest planned together."""
        records = await self.lease.read([r.agent_id for r in requests])
        answers = [rows.answered(req, rec) for req, rec in zip(requests, records)]
        todo = [i for i, a in enumerate(answers) if a is None]
        replays = sum(isinstance(a, PlanAnswer) for a in answers)
        if replays:
            self.metrics.replays.inc(replays)
        if todo:
            fresh = await self._plan([requests[i] for i in todo], [records[i] for i in todo],
                                     [arrived[i] for i in todo])
            for i, answer in zip(todo, fresh):
                answers[i] = answer
        return answers  # type: ignore[return-value]

    async def reset(self, agent_ids: list[str]) -> int:
        """Forget agents (their next request starts fresh); returns how many were known (for one agent:
        whether it was). Waits for the pass in progress, which may be about to write these agents."""
        async with self._pass:  # that pass's write was submitted first: the shards apply the reset after it
            await self.writes.ordered()
            cached = self.lease.drop(agent_ids)
            self.decisions.forget(agent_ids)
            return max(await self.store.reset(agent_ids), cached)

    async def explain(self, req: ExplainRequest) -> dict[str, Any] | Rejected:
        """Why an agent's action (``serving.explain.Explainer.explain``): the explanation's body, or a 404."""
        return await self.explainer.explain(req)

    async def explained(self, req: PlanRequest, answer: Answer) -> Answer:
        """``answer`` with the explanation its request asked for (``serving.explain.Explainer.explained``)."""
        return await self.explainer.explained(req, answer) if isinstance(answer, PlanAnswer) else answer

    async def settled(self, since: int | None = None) -> bool:
        """Wait for every state write and telemetry call submitted so far; True when they succeeded (see
        ``EngineWrites.settled``; ``since``: a ``writes.submitted`` read before the caller's ``submit``)."""
        return await self.writes.settled(since)

    def stats(self) -> dict[str, Any]:
        """Batches run by this replica: how well concurrent requests were merged; transitions whose telemetry
        call failed, held for the next (``telemetry_held``) or dropped beyond the hold's bound."""
        return {"batches": self.batches, "requests": self.requests, "largest_batch": self.largest_batch,
                "mean_batch": self.requests / self.batches if self.batches else None,
                "unlogged": dict(self.unlogged), "telemetry_held": self.writes.held,
                "telemetry_dropped": self.writes.dropped}

    # -- writer lease (``serving.engine_lease``) ----------------------------------------------
    @property
    def sole_writer(self) -> bool:
        """Whether the last lease renewal found this engine the only live writer (its cache is used only then)."""
        return self.lease.sole_writer

    async def join(self) -> None:
        """Take the writer lease before the first batch (``WriterLease.join``): a replica's constructor calls it."""
        await self.lease.join()

    async def renew_lease(self) -> int:
        """Renew the writer lease now; returns the live writers the shards know (``WriterLease.renew``)."""
        return await self.lease.renew()

    def _idle_s(self) -> float | None:
        """Seconds since the last batch, None while one runs or waits."""
        return time.monotonic() - self._last_run if self._idle.is_set() else None

    # -- planning a batch -----------------------------------------------------------------
    async def _plan(self, requests: list[PlanRequest], records: list[AgentRecord | None],
                    arrived: list[float]) -> list[PlanAnswer]:
        """Plan requests of distinct agents, one planner call per arm (both at once); submit their records and
        transitions in one write."""
        obs = np.asarray([r.observation for r in requests], np.float32)  # (N, S)
        # which requests close a transition, decided before planning from what the server knows
        steps = [rows.continuation(req, rec) for req, rec in zip(requests, records)]
        self.unlogged.update(rows.unlogged(steps))
        flags = rows.violation_flags(records, steps, obs)  # (N, 3), once: logs, metrics and the A/B totals read it
        batch = Batch(requests, records, steps, obs, flags, rows.objectives(requests),
                      self._budget_ms(requests, arrived))
        arms = self.arms.split(requests)
        # What each arm's requests close is known before they are planned: its telemetry call goes beside planning.
        closed = [rows.transitions([requests[i] for i in idx], [records[i] for i in idx], [steps[i] for i in idx],
                                   obs[idx], flags[idx]) for _, idx in arms]
        parts = [c for c in closed if c is not None]
        logged = self.writes.log(Transitions.concat(parts) if parts else None)
        planned = await asyncio.gather(*(self.arms.plan(batch, planner, idx, part)
                                         for (planner, idx), part in zip(arms, closed)), return_exceptions=True)
        answers: list[PlanAnswer | None] = [None] * len(requests)
        records_out: list[AgentRecord] = []
        for (planner, idx), part, arm in zip(arms, closed, planned):
            if isinstance(arm, BaseException):
                if planner is self.planner:
                    raise arm  # the records stay as they were: the requests are planned again, logged once
                logger.warning("A/B candidate arm failed, its %d agents planned by production: %s", len(idx), arm)
                arm = await self.arms.plan(batch, self.planner, idx, part)
            for i, answer in zip(idx.tolist(), arm[0]):
                answers[i] = answer
            records_out += arm[1]
        self._write(records_out, logged)  # the state write, once the telemetry call has finished
        return answers  # type: ignore[return-value]

    def _budget_ms(self, requests: list[PlanRequest], arrived: list[float]) -> float | None:
        """What is left of the tightest deadline, measured from each request's arrival at the ingress."""
        deadlines = [r.deadline_ms or self.default_deadline_ms for r in requests]
        if all(d is None for d in deadlines):
            return None
        now = time.monotonic()
        left = [d - (now - a) * 1000 for d, a in zip(deadlines, arrived) if d is not None]
        return max(min(left) - _BUDGET_MARGIN_MS, 0.01)

    def _write(self, records: list[AgentRecord], logged: asyncio.Task[None] | None) -> None:
        """Send the state write once the telemetry call ``logged`` has finished (``EngineWrites.submit`` says why
        in that order).

        The state write is submitted before anything else is sent to the shards: a retry of one of these
        requests, in this batch's second pass or a later cycle, reaches the shard after this write (calls
        from one process to one actor run in submission order), so it finds its answer; the logs keep
        each (agent, episode, step) once.
        """
        self.writes.submit(records, logged)
        self.lease.wrote(records)  # before a second pass of this batch reads them

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task
