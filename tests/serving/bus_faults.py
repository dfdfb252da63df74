"""What the fleet bus's fault tests (``test_bus_faults``) watch: the agents' calls, their replies, the logs.

- ``Fleet``: ``serving.fleet.drive_fleet`` on a thread, its stream client recording every call's body and
  answer, so a test knows which transitions the agents closed (``closed_steps``).
- ``ReplyTap``: a reader of the agents' reply streams beside their client, which keeps every reply (a client
  keeps only the first of a request's), so a test sees a request answered twice.
- ``logged_steps``: what the logs hold for a fleet, once the logger has flushed it.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

import pytest
import ray
import redis

import serving.fleet
from serving.bus import BusNames, StreamReply, decode_reply
from serving.fleet_config import FleetConfig, FleetResult
from serving.link import FleetClientError
from serving.stream_client import AsyncStreamClient
from worldmodel.data import read_transitions

Call = tuple[dict[str, Any], dict[str, Any] | None]
"""A plan body and its answer (None: the call failed, after its retries)."""


def agent_ids(prefix: str, agents: int) -> list[str]:
    """The ids ``drive_fleet`` gives a fleet's agents."""
    return [f"{prefix}{i:04d}" for i in range(agents)]


class Fleet:
    """A simulated fleet driving through the bus on a thread: ``start``, then ``wait`` for its result."""

    def __init__(self, config: FleetConfig, monkeypatch: pytest.MonkeyPatch) -> None:
        self.config = config
        self.calls: list[Call] = []
        self._result: FleetResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drive, name="fleet", daemon=True)
        calls = self.calls

        class Recording(AsyncStreamClient):
            async def send(self, body: dict[str, Any]) -> dict[str, Any]:
                try:
                    answer = await super().send(body)
                except FleetClientError:
                    calls.append((body, None))
                    raise
                calls.append((body, answer))
                return answer

        monkeypatch.setattr(serving.fleet, "AsyncStreamClient", Recording)

    def start(self) -> Fleet:
        self._thread.start()
        return self

    def wait(self, timeout_s: float = 120.0) -> FleetResult:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"the fleet still drives after {timeout_s} s"
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def closed_steps(self) -> dict[str, list[int]]:
        """Per agent, the sorted steps ``t`` of the transitions its answered requests closed: a request at
        ``t > 0`` closes ``t - 1`` when the agent's previous request (``t - 1``) was answered too, so that the
        action it reports is the one the server gave."""
        steps: dict[str, list[int]] = defaultdict(list)
        last: dict[str, Call] = {}
        for body, answer in self.calls:  # each agent's calls in order: it waits for one before the next
            agent, t = body["agent_id"], body["t"]
            before = last.get(agent)
            if answer is not None and t > 0 and before is not None and before[1] is not None \
                    and before[0]["t"] == t - 1:
                steps[agent].append(t - 1)
            last[agent] = (body, answer)
        return {agent: sorted(ts) for agent, ts in steps.items()}

    def _drive(self) -> None:
        try:
            self._result = serving.fleet.run_loop(serving.fleet.drive_fleet(self.config))
        except BaseException as err:  # handed to ``wait``
            self._error = err


class ReplyTap:
    """Reads the reply streams of ``agents`` from their start, on a thread, while used as a context manager."""

    def __init__(self, redis_url: str, names: BusNames, agents: list[str]) -> None:
        self.replies: list[tuple[str, StreamReply]] = []
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
        self._streams = {names.reply(agent): b"0-0" for agent in agents}
        self._agents = {names.reply(agent): agent for agent in agents}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="reply-tap", daemon=True)

    def __enter__(self) -> ReplyTap:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        time.sleep(0.3)  # the last replies
        self._stop.set()
        self._thread.join(10)
        self._redis.close()

    def ok(self) -> list[StreamReply]:
        return [reply for _, reply in self.replies if reply.ok]

    def answered_twice_differently(self) -> dict[tuple[str, str], set[tuple[str, tuple[float, ...]]]]:
        """The (agent, request_id) answered (200) with more than one (plan_id, action), and those answers."""
        answers: dict[tuple[str, str], set[tuple[str, tuple[float, ...]]]] = defaultdict(set)
        for agent, reply in self.replies:
            if reply.ok:
                answers[(agent, reply.request_id)].add((reply.body["plan_id"], tuple(reply.body["action"])))
        return {key: seen for key, seen in answers.items() if len(seen) > 1}

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                got = self._redis.xread(self._streams, count=100, block=200)
            except (redis.RedisError, OSError):  # Redis restarting: read again once it is back
                time.sleep(0.1)
                continue
            for stream, entries in got or []:
                name = stream.decode()
                for entry_id, fields in entries:
                    self._streams[name] = entry_id
                    self.replies.append((self._agents[name], decode_reply(fields)))


def logged_steps(logger: Any, log_dir: str, prefix: str, expected: int,
                 timeout_s: float = 60.0) -> tuple[dict[str, list[int]], list[tuple[str, str, int]]]:
    """Flush ``logger`` until the logs hold ``expected`` transitions of agents named ``prefix...`` (or
    ``timeout_s`` passed), then once more, so a late copy would show.

    Returns:
        Per agent the sorted steps ``t`` logged, and every row's (agent_id, eps_id, t).
    """
    def read() -> list[tuple[str, str, int]]:
        ray.get(logger.flush.remote(timeout_s=10), timeout=60)
        try:
            logs = read_transitions(log_dir)
        except FileNotFoundError:  # nothing written yet
            return []
        return [(a, e, int(t)) for a, e, t in zip(logs.agent_id.tolist(), logs.eps_id.tolist(), logs.t.tolist())
                if a.startswith(prefix)]

    deadline = time.monotonic() + timeout_s
    keys = read()
    while len(keys) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        keys = read()
    time.sleep(1.0)
    keys = read()
    steps: dict[str, list[int]] = defaultdict(list)
    for agent, _, t in keys:
        steps[agent].append(t)
    return {agent: sorted(ts) for agent, ts in steps.items()}, keys


def deploy_bus_app(root: Any, redis_url: str, state: Any, telemetry: str, claim_idle_ms: int) -> tuple[str, str]:
    """The fleet endpoint with the bus for a test module: a tiny Nav2D model promoted to production, two stream
    consumer replicas, telemetry through the stream into ``root/logs``. Returns (url, the served version)."""
    from actors.ports import free_port
    from serving.deploy import deploy
    from tests.worldmodel.conftest import TINY_MODEL, TINY_TRAIN
    from worldmodel.envs import make_env, space_spec
    from worldmodel.envs.collect import collect
    from worldmodel.registry import ModelRegistry
    from worldmodel.training import train_world_model

    data = collect("Nav2D-v0", episodes=8, seed=0)
    registry = ModelRegistry(str(root / "registry"))
    v1 = registry.register(train_world_model(data, space_spec(make_env("Nav2D-v0"), "Nav2D-v0"), TINY_MODEL,
                                             TINY_TRAIN))
    registry.promote(v1.version, "production")
    url = deploy("production", registry_uri=str(root / "registry"), log_uri=str(root / "logs"), port=free_port(),
                 state=state, telemetry_name=telemetry, redis_url=redis_url, consumer_replicas=2,
                 claim_idle_ms=claim_idle_ms, service={"plan": {"horizon": 8, "samples": 16}})
    return url, v1.version
