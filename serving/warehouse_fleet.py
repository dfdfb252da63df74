"""A warehouse floor driving closed loop through the fleet endpoint: every robot asks each tick, the floor steps.

One ``WarehouseFloor`` of ``FleetConfig.agents`` robots on one site, laid out as the served floor
(``FleetConfig.floor_robots``): each tick (``FleetConfig.hz``) every
robot sends its observation with its site, the reward of its previous action, its step ``t`` and
``prev_action``, all at once (one request per robot, over HTTP on its own connection or through the fleet
bus's shared client; or the whole tick as one ``POST /v1/plan/batch`` with ``FleetConfig.batch``); when
every answer is in, the floor steps with them. A failed request makes its robot take the zero action
(keep its velocity), which its next request reports. The floor episode ends for every robot at once: the
next tick reports the final observations as truncated, then the floor resets.

What the floor counts (contacts, shelf contacts, deliveries) comes back in ``FleetResult.floor``; the
latencies are per request, as ``serving.fleet``'s, from sending to the answer read.

Shapes: ``N`` robots, ``S`` observation, ``A`` action.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np

from serving.client import ClientStats, FleetClientError, RetryPolicy
from serving.episodes import plan_body
from serving.fleet import Send, agent_lines, report_progress, Tally
from serving.fleet_config import FleetConfig, FleetResult, FloorCounts
from serving.link import AgentLink
from worldmodel.envs.warehouse import DT, WarehouseFloor
from worldmodel.envs.warehouse_layout import layout_for

_HOUR_S = 3600.0


class _Floor:
    """The floor and what its next tick reports for every robot."""

    def __init__(self, config: FleetConfig, prefix: str) -> None:
        self.floor = WarehouseFloor(config.agents, layout=layout_for(config.floor_robots), seed=config.seed)
        self.ids = [f"{prefix}{i:04d}" for i in range(config.agents)]
        self.site = f"{prefix}floor"
        self.obs, _ = self.floor.reset(seed=config.seed)
        self.t, self.rewards, self.prev = 0, None, None
        self.truncated = False
        self.ticks = self.collisions = self.shelf = self.deliveries = self.shielded = 0
        self.robot_episodes = self.delivered_episodes = 0
        self._delivered = np.zeros(config.agents, bool)

    def bodies(self, deadline_ms: float | None) -> list[dict[str, Any]]:
        """This tick's plan bodies, one per robot."""
        return [plan_body(agent, self.obs[i], reward=None if self.rewards is None else float(self.rewards[i]),
                          truncated=self.truncated, deadline_ms=deadline_ms, t=self.t, site=self.site,
                          prev_action=None if self.prev is None else self.prev[i])
                for i, agent in enumerate(self.ids)]

    def act(self, actions: np.ndarray) -> None:
        """Step the floor with (N, A) actions, or reset it after a tick that reported the episode's end."""
        if self.truncated:  # the final observations were sent: a new floor episode starts
            self.robot_episodes += len(self.ids)
            self.delivered_episodes += int(self._delivered.sum())
            self._delivered[:] = False
            self.obs, _ = self.floor.reset()
            self.t, self.rewards, self.prev, self.truncated = 0, None, None, False
            return
        self.obs, self.rewards, _, truncated, info = self.floor.step(actions)
        self.t, self.prev, self.truncated = self.t + 1, actions, bool(np.all(truncated))
        self.ticks += 1
        self.collisions += int(np.sum(info["collisions"]))
        self.shelf += int(np.sum(info["shelf_collisions"]))
        self.deliveries += int(np.sum(info["deliveries"]))
        self._delivered |= np.asarray(info["deliveries"]) > 0

    def counts(self) -> FloorCounts:
        hours = max(self.ticks, 1) * DT / _HOUR_S
        return FloorCounts(self.ticks, self.collisions / (hours * len(self.ids)), self.shelf,
                           self.deliveries / hours, self.shielded)


async def drive_floor(config: FleetConfig, progress: Callable[[str], None] | None = None) -> FleetResult:
    """Drive a floor of ``config.agents`` robots through the endpoint for ``config.seconds``; its result.

    Ticks keep to ``config.hz`` while the answers keep up; a tick whose answers come late delays the next
    (the floor waits for every robot), counted in ``late_ticks``.
    """
    prefix = config.agent_prefix if config.agent_prefix is not None else f"floor-{uuid.uuid4().hex[:8]}-"
    floor = _Floor(config, prefix)
    async with _floor_lines(config) as (send_tick, stats):
        tally = Tally(start=time.perf_counter())
        reporter = asyncio.create_task(report_progress(tally, config.seconds, progress)) if progress else None
        try:
            await _ticks(config, floor, tally, send_tick)
        finally:
            if reporter is not None:
                reporter.cancel()
    elapsed = min(time.perf_counter() - tally.start, config.seconds)
    tally.episodes, tally.successes = floor.robot_episodes, floor.delivered_episodes
    return dataclasses.replace(tally.result(config, elapsed, stats.retries), floor=floor.counts())


Answered = tuple[dict[str, Any] | FleetClientError, float]
"""A robot's answer (or the error its request met) and when it was read (``time.perf_counter``)."""
SendTick = Callable[[list[dict[str, Any]]], Awaitable[list[Answered]]]
"""A tick's bodies -> each robot's ``Answered``."""


async def _ticks(config: FleetConfig, floor: _Floor, tally: Tally, send_tick: SendTick) -> None:
    """The floor's loop: send every robot's request, step on the answers, until the run is over."""
    zero = np.zeros((config.agents, 2), np.float32)
    end, tick = tally.start + config.seconds, tally.start
    while True:
        await asyncio.sleep(max(0.0, tick - time.perf_counter()))
        sent = time.perf_counter()
        if sent >= end:
            return
        answers = await send_tick(floor.bodies(config.deadline_ms))
        now = time.perf_counter()
        actions = zero.copy()
        for i, (answer, read) in enumerate(answers):  # one entry per robot: the tally counts each request
            tally.timed(sent, read)
            if isinstance(answer, FleetClientError):
                tally.errors[answer.kind] += 1
                continue
            tally.answered(answer)
            floor.shielded += answer.get("decision") == "shielded"
            actions[i] = answer["action"]
        floor.act(actions)
        tick += config.period_s
        if tick < now:  # the tick took longer than a period: the floor waited for its robots
            tally.late += 1
            tick = now


@contextlib.asynccontextmanager
async def _floor_lines(config: FleetConfig) -> AsyncIterator[tuple[SendTick, ClientStats]]:
    """How a tick's requests reach the endpoint, and the stats counting the calls: ``serving.fleet.agent_lines``'s
    (one line per robot), or with ``config.batch`` one keep-alive connection for the batch route."""
    if not config.batch:
        async with agent_lines(config) as (sends, stats):
            yield functools.partial(_send_each, sends), stats
        return
    policy = RetryPolicy(config.url, config.token, config.timeout_s, config.retries)  # type: ignore[arg-type]
    link = AgentLink(policy)
    try:
        yield functools.partial(_send_batch, link), policy.stats
    finally:
        link.close()


async def _send_each(sends: list[Send], bodies: list[dict[str, Any]]) -> list[Answered]:
    """One request per robot, all in flight together, each timed on its own."""
    return list(await asyncio.gather(*(_caught(send(body)) for send, body in zip(sends, bodies))))


async def _send_batch(link: AgentLink, bodies: list[dict[str, Any]]) -> list[Answered]:
    """The whole tick as one batch request: every robot gets the batch's answer (or its error) when it is read."""
    try:
        answer = await link.post("/v1/plan/batch", {"requests": bodies})
    except FleetClientError as err:
        return [(err, time.perf_counter())] * len(bodies)
    read = time.perf_counter()
    return [(one, read) for one in answer["responses"]]


async def _caught(call: Awaitable[dict[str, Any]]) -> Answered:
    try:
        answer: dict[str, Any] | FleetClientError = await call
    except FleetClientError as err:
        answer = err
    return answer, time.perf_counter()
