"""A cycle gathers a warehouse site's per-robot requests: it waits for the robots the site had, briefly."""

from __future__ import annotations

import asyncio
import time

from serving.schema import PlanRequest
from serving.sites import SiteGather


def _item(agent: str, site: str | None) -> tuple[PlanRequest, float, None]:
    return PlanRequest(agent_id=agent, observation=[0.0], site=site), time.monotonic(), None


async def _take_later(gather: SiteGather, now: list, later: list, delay_s: float) -> tuple[list, float]:
    queue: asyncio.Queue = asyncio.Queue()
    for item in now:
        queue.put_nowait(item)

    async def arrive() -> None:
        await asyncio.sleep(delay_s)
        for item in later:
            queue.put_nowait(item)

    start = time.monotonic()
    task = asyncio.create_task(arrive())
    items = await gather.take(queue, 64)
    waited = time.monotonic() - start
    await task
    return [r.agent_id for r, _, _ in items], waited


def test_a_site_waits_for_the_robots_it_had_and_lone_agents_never_wait() -> None:
    async def scenario() -> None:
        gather = SiteGather(gather_s=0.5)
        first, _ = await _take_later(gather, [_item("r1", "s"), _item("r2", "s")], [], 0.0)
        assert first == ["r1", "r2"]  # a site never seen: nothing to wait for
        second, waited = await _take_later(gather, [_item("r1", "s")], [_item("r2", "s")], 0.05)
        assert second == ["r1", "r2"] and 0.04 < waited < 0.4  # r2 came 50 ms later: one cycle for both
        lone, waited = await _take_later(gather, [_item("a", None)], [_item("b", None)], 0.05)
        assert lone == ["a"] and waited < 0.04

    asyncio.run(scenario())


def test_the_wait_is_bounded_and_robots_that_left_are_forgotten() -> None:
    async def scenario() -> None:
        gather = SiteGather(gather_s=0.05, memory_s=0.2)
        await _take_later(gather, [_item("r1", "s"), _item("r2", "s")], [], 0.0)
        alone, waited = await _take_later(gather, [_item("r1", "s")], [], 0.0)
        assert alone == ["r1"] and 0.04 < waited < 0.3  # r2 is silent: the cycle goes after 50 ms
        await asyncio.sleep(0.25)  # r2 not heard from for longer than the memory
        gather._note([_item("r1", "s")])
        alone, waited = await _take_later(gather, [_item("r1", "s")], [], 0.0)
        assert alone == ["r1"] and waited < 0.04

    asyncio.run(scenario())
