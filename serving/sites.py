"""Grouping a warehouse site's per-robot requests by tick: a cycle waits briefly for the rest of a site.

Robots that each send their own request every tick arrive spread over a few milliseconds. A cycle that
started on the first of them would plan the site in pieces (the later robots as agents that did not ask)
and make the rest wait for a second cycle, often past their deadline. So a cycle holding requests of a
site keeps taking requests until every robot seen on that site in the last ``MEMORY_S`` is in it, or
``GATHER_S`` has passed since it started gathering. Requests without a site (lone agents) never wait.

Shapes: the queue holds ``(PlanRequest, arrived, future)`` items.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

GATHER_S = 0.02
"""Longest a cycle waits for the rest of a site's robots: a fifth of the 100 ms control period."""
MEMORY_S = 1.0
"""A robot not heard from for this long no longer counts as one of its site's robots."""

Item = tuple[Any, float, Any]
"""A queued ``(PlanRequest, arrived, future)``."""


class SiteGather:
    """Takes a cycle's requests from the engine's queue, waiting for whole sites (see the module docstring)."""

    def __init__(self, gather_s: float = GATHER_S, memory_s: float = MEMORY_S) -> None:
        self.gather_s, self.memory_s = gather_s, memory_s
        self._seen: dict[str, dict[str, float]] = defaultdict(dict)
        """Per site, each robot's last request time (``time.monotonic``)."""

    async def take(self, queue: asyncio.Queue[Item], most: int) -> list[Item]:
        """The next cycle's items: at least one (waits for it), at most ``most``."""
        items = [await queue.get()]
        _drain(queue, items, most)
        if any(item[0].site is not None for item in items):
            until = time.monotonic() + self.gather_s
            while len(items) < most and not self._complete(items):
                try:
                    items.append(await asyncio.wait_for(queue.get(), until - time.monotonic()))
                except (asyncio.TimeoutError, ValueError):  # the wait is over (a negative timeout: already)
                    break
                _drain(queue, items, most)
        self._note(items)
        return items

    def _complete(self, items: list[Item]) -> bool:
        """Whether every recently seen robot of each site in ``items`` has a request among them."""
        now, present = time.monotonic(), defaultdict(set)
        for request, _, _ in items:
            if request.site is not None:
                present[request.site].add(request.agent_id)
        return all(agent in agents for site, agents in present.items()
                   for agent, last in self._seen[site].items() if now - last < self.memory_s)

    def _note(self, items: list[Item]) -> None:
        now = time.monotonic()
        for request, _, _ in items:
            if request.site is not None:
                self._seen[request.site][request.agent_id] = now
        for site, agents in self._seen.items():  # forget robots that left
            for agent in [a for a, last in agents.items() if now - last >= self.memory_s]:
                del agents[agent]


def _drain(queue: asyncio.Queue[Item], items: list[Item], most: int) -> None:
    while not queue.empty() and len(items) < most:
        items.append(queue.get_nowait())
