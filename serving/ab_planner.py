"""The candidate planner deployment of a live A/B test: a ``PlannerServer`` that follows the registry's A/B test.

It serves the running test's version (``ModelRegistry.ab``) and, with no test running, production's (it then
gets no traffic: the engines send it agents only while a test runs). It switches between batches, as the
production planner follows its stage, so starting, changing or ending a test needs no redeploy.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from serving.planner_server import PlannerServer
from worldmodel.registry import ModelRegistry

logger = logging.getLogger("ray.serve")


def candidate_ref(registry_uri: str) -> str:
    """The version to load at start: the running test's, else 'production'."""
    test = ModelRegistry(registry_uri).ab()
    return test.version if test is not None else "production"


class CandidatePlanner(PlannerServer):
    """The planner deployment of the A/B test's candidate arm."""

    def __init__(self, registry_uri: str, service: dict[str, Any], poll_s: float) -> None:
        super().__init__(candidate_ref(registry_uri), registry_uri, service, poll_s)
        self.following = True  # the A/B test, whatever ref it started from

    async def info(self) -> dict[str, Any]:
        return await super().info() | {"follows": "ab"}

    async def _follow_once(self, registry: ModelRegistry) -> str | None:
        """Switch to the test's version (production's when none runs) if it moved; returns what is wrong."""
        test = await asyncio.to_thread(registry.ab)
        holder = test.version if test is not None else getattr(await asyncio.to_thread(registry.production),
                                                                 "version", None)
        if holder is None:
            return (f"no A/B test and no production version in {self.registry_uri}; "
                    f"still serving {self.worker.version()}")
        if holder != self.worker.version():
            await asyncio.to_thread(self.worker.switch, holder)  # batches in flight keep the old one
            logger.info("A/B candidate arm now serving %s", holder)
        return None
