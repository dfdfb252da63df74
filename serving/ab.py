"""Live A/B: which agents the candidate version serves, and the per-version totals an engine keeps and publishes.

Assignment is sticky and stable: an agent is in the candidate arm when a 64-bit hash of ``"TEST_ID:agent_id"``
(FNV-1a, then splitmix64's finaliser for well-mixed high bits) falls under ``share``. It is the same on every
replica and every run (Python's ``hash`` is salted per process), salted by the test's id so each test draws
its own agents, and monotone in ``share`` (raising the share keeps the agents already in). A warehouse robot
(``site`` set) is assigned by ``"TEST_ID:site:SITE"`` instead: a site's robots are planned jointly, so the
whole site is in one arm.

``LiveAB`` is the engine's side: it follows the registry's ``ABTest`` (polled, as planners follow a stage),
holds the candidate planner deployment's handle, adds each planned arm's outcomes to per-version
``VersionStats`` (outcomes belong to the version that acted: a reward reported now is the previous answer's),
and publishes them to ``REGISTRY/ab/TEST_ID/WRITER.json`` (atomically, every ``WRITE_S``). One file per engine
(ingress and stream consumer replicas): ``wm models compare`` merges them (``read_live``).

Shapes: ``N`` requests in a batch, ``S`` observation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, Sequence

import numpy as np
import pyarrow.fs as pafs

from actors.records import AgentRecord
from planners.service import PlanBatch
from serving import rows
from serving.ab_stats import VersionStats
from serving.metrics import ServingMetrics
from serving.schema import PlanRequest
from worldmodel.data import Transitions
from worldmodel.data.writer import publish_bytes
from worldmodel.registry import ModelRegistry
from worldmodel.registry_records import ABTest

logger = logging.getLogger("ray.serve")

WRITE_S = 2.0
"""Seconds between two publications of an engine's live totals (only when they changed)."""
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def stable_hash(keys: Sequence[str]) -> np.ndarray:
    """(N,) uint64 FNV-1a of each ASCII key, finalised by splitmix64: one numpy pass per character column."""
    if len(keys) == 0:
        return np.zeros(0, np.uint64)
    raw = np.array(keys, dtype="S")  # agent ids and sites are ASCII (their patterns say so)
    chars = raw.view(np.uint8).reshape(len(raw), raw.dtype.itemsize).astype(np.uint64)  # (N, L)
    lengths = np.char.str_len(raw)
    h = np.full(len(raw), _FNV_OFFSET, np.uint64)
    for j in range(chars.shape[1]):  # over characters, never over agents
        h = np.where(j < lengths, (h ^ chars[:, j]) * _FNV_PRIME, h)
    h = (h ^ (h >> np.uint64(30))) * _MIX[0]
    h = (h ^ (h >> np.uint64(27))) * _MIX[1]
    return h ^ (h >> np.uint64(31))


def assign(test_id: str, agent_ids: Sequence[str], sites: Sequence[str | None], share: float) -> np.ndarray:
    """(N,) bool: True where the candidate serves the agent (by site where it has one)."""
    keys = [f"{test_id}:site:{s}" if s is not None else f"{test_id}:{a}" for a, s in zip(agent_ids, sites)]
    unit = (stable_hash(keys) >> np.uint64(11)).astype(np.float64) / 2.0**53  # uniform in [0, 1)
    return unit < share


def live_dir(registry: ModelRegistry, test_id: str) -> str:
    return f"{registry.store.root}/ab/{test_id}"


def write_live(registry: ModelRegistry, test_id: str, writer: str, payload: dict[str, Any]) -> None:
    """Publish one engine's totals for a test, replacing its previous ones atomically."""
    fs, directory = registry.store.filesystem, live_dir(registry, test_id)
    fs.create_dir(directory, recursive=True)
    publish_bytes(fs, f"{directory}/{writer}.json", json.dumps(payload, separators=(",", ":")).encode())


def read_live(registry: ModelRegistry, test_id: str) -> list[dict[str, Any]]:
    """Every engine's published totals for a test (none yet: empty)."""
    fs = registry.store.filesystem
    infos = fs.get_file_info(pafs.FileSelector(live_dir(registry, test_id), allow_not_found=True))
    out = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.is_file and info.base_name.endswith(".json") and not info.base_name.startswith("."):
            with fs.open_input_stream(info.path) as f:
                out.append(json.loads(f.read()))
    return out


def live_ab(candidate: Any | None, registry_uri: str | None, poll_s: float, engine: str,
            metrics: ServingMetrics | None = None) -> LiveAB | None:
    """An engine's ``LiveAB`` when the app deploys the A/B candidate planner (``AppConfig.ab``), else None;
    ``engine`` names its kind ('ingress', 'consumer'), made unique per replica here."""
    if candidate is None:
        return None
    if not registry_uri:
        raise ValueError("the A/B candidate planner follows a registry's A/B test: give registry_uri")
    return LiveAB(candidate, registry_uri, poll_s, f"{engine}-{uuid.uuid4().hex[:12]}", metrics)


class LiveAB:
    """An engine's view of the live A/B test: the candidate deployment, the test, the agents' arms, the totals."""

    def __init__(self, candidate: Any, registry_uri: str, poll_s: float, writer: str,
                 metrics: ServingMetrics | None = None) -> None:
        """``candidate``: the candidate planner deployment's handle (``serving.ab_planner``); ``writer``: names
        this engine's file of totals; ``metrics``: where the test's share is exported (None: not exported)."""
        self.candidate, self.registry_uri, self.poll_s, self.writer = candidate, registry_uri, poll_s, writer
        self.metrics = metrics
        self.test: ABTest | None = None
        self.stats: dict[str, VersionStats] = {}
        """Per version, this engine's totals for the running test."""
        self._dirty = False
        self._written = 0.0
        """When the totals were last published (monotonic)."""
        self._task: asyncio.Task[None] | None = None

    def arms(self, requests: Sequence[PlanRequest]) -> np.ndarray | None:
        """(N,) bool, True for the candidate's agents; None while no test runs."""
        if self._task is None or self._task.done():  # started on the loop that serves (a test's may end)
            self._task = asyncio.get_running_loop().create_task(self._follow())
        test = self.test
        if test is None:
            return None
        return assign(test.id, [r.agent_id for r in requests], [r.site for r in requests], test.share)

    def observe(self, batch: PlanBatch, records: Sequence[AgentRecord | None], steps: Sequence[rows.Continuation],
                obs: np.ndarray, flags: np.ndarray, transitions: Transitions | None) -> None:
        """Add one planned arm: its call's latency, and each agent's outcome of its previous answer, to the
        version that gave that answer (records, steps, (N, S) obs and (N, 3) flags as ``BatchMetrics.observe_batch``
        takes them)."""
        if self.test is None:
            return
        self._version(batch.model_version).add_call(batch.elapsed_ms)
        going = [i for i, (r, s) in enumerate(zip(records, steps)) if s.same_episode and r is not None]
        ids = np.array([records[i].agent_id for i in going], dtype=object)  # type: ignore[union-attr]
        versions = np.array([records[i].model_version for i in going], dtype=object)  # type: ignore[union-attr]
        violated = flags.any(-1)[going]
        scored, mse = rows.agent_mse(records, steps, obs)
        position = {i: k for k, i in enumerate(going)}
        at = np.array([position[i] for i in scored], np.int64)
        for v in set(versions.tolist()):
            mine = versions == v
            stats = self._version(v)
            stats.add(ids[mine].tolist(), "steps", np.ones(int(mine.sum())))
            stats.add(ids[mine].tolist(), "violations", violated[mine])
            hit = versions[at] == v if len(at) else np.zeros(0, bool)
            stats.add(ids[at[hit]].tolist(), "mse_n", np.ones(int(hit.sum())))
            stats.add(ids[at[hit]].tolist(), "mse_sum", mse[hit])
        if transitions is not None:
            self._rewards(transitions)
        self._dirty = True

    def _rewards(self, transitions: Transitions) -> None:
        """Rewards and ended episodes, for the version that acted (none: the client's own action)."""
        for v in set(transitions.model_version.tolist()) - {""}:
            mine = transitions.model_version == v
            stats, ids = self._version(v), transitions.agent_id[mine].tolist()
            stats.add(ids, "reward_steps", np.ones(len(ids)))
            stats.add(ids, "reward_sum", transitions.rewards[mine])
            ended = transitions.terminateds[mine] | transitions.truncateds[mine]
            stats.add_episodes(int(ended.sum()), int(transitions.terminateds[mine].sum()))

    def summary(self) -> dict[str, Any]:
        """What this engine publishes: the test and its per-version totals."""
        return {"test": None if self.test is None else self.test.to_dict(), "writer": self.writer,
                "updated": time.time(), "versions": {v: s.to_dict() for v, s in self.stats.items()}}

    def status(self) -> dict[str, Any]:
        """This engine's view for ``GET /v1/models``: the test and, per version, its metrics' intervals here."""
        return {"test": None if self.test is None else self.test.to_dict(), "writer": self.writer,
                "versions": {v: {k: i.to_dict() for k, i in s.intervals().items()} for v, s in self.stats.items()}}

    def _version(self, version: str) -> VersionStats:
        return self.stats.setdefault(version, VersionStats())

    async def _follow(self) -> None:
        """Forever: ``refresh`` every ``poll_s``; a failure keeps the test it knows and is said once."""
        registry = await asyncio.to_thread(ModelRegistry, self.registry_uri)
        last_problem = None
        while True:
            try:
                await self.refresh(registry)
                problem = None
            except Exception as err:  # keep serving with the test we know
                problem = f"live A/B: could not follow {self.registry_uri}: {type(err).__name__}: {err}"
            if problem is not None and problem != last_problem:
                logger.warning(problem)
            last_problem = problem
            await asyncio.sleep(self.poll_s)

    async def refresh(self, registry: ModelRegistry, publish: bool = False) -> None:
        """Read the registry's test; publish the totals if they changed and ``WRITE_S`` passed (or ``publish``).
        A new or ended test first publishes the last totals of the one before, then starts from none."""
        test = await asyncio.to_thread(registry.ab)
        if (test and test.id) != (self.test and self.test.id):
            await self._publish(registry)
            self.stats, self._dirty = {}, False
            if self.metrics is not None and self.test is not None:
                self.metrics.ab_share.set(0.0, tags={"model_version": self.test.version})
        self.test = test
        if self.metrics is not None and test is not None:  # set every poll: Ray drops a gauge not set for a while
            self.metrics.ab_share.set(test.share, tags={"model_version": test.version})
        if publish or time.monotonic() - self._written >= WRITE_S:
            await self._publish(registry)

    async def _publish(self, registry: ModelRegistry) -> None:
        if self.test is None or not self._dirty:
            return
        payload, self._dirty, self._written = self.summary(), False, time.monotonic()
        await asyncio.to_thread(write_live, registry, self.test.id, self.writer, payload)
