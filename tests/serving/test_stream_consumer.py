"""Streaming control end to end: agents on a real Redis, the app's StreamConsumer replicas, the logs.

One app serves the module: a tiny model, two consumer replicas, telemetry through the bus's stream into
a log directory. The agents here speak the bus's codec directly (``serving.bus``), as a stream client does.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import pytest
import ray
import redis
import requests

from actors.common import NAMESPACE
from actors.state import StateConfig
from serving.bus import FIELD, BusNames, StreamReply, decode_reply, encode_request
from serving.config import AppConfig
from serving.deploy import APP_NAME, shutdown_app
from serving.episodes import EpisodeSteps
from tests.ray_fixtures import ray_local  # noqa: F401
from tests.redis_fixtures import redis_server  # noqa: F401
from tests.serving.bus_faults import deploy_bus_app
from tests.serving.test_reward_model_serving import fit
from worldmodel.data import read_transitions
from worldmodel.envs import make_env, space_spec
from worldmodel.reward_registry import RewardRegistry

pytestmark = pytest.mark.slow
STATE = StateConfig(shards=2, name="test-bus-state")
TELEMETRY = "test-bus-telemetry"
BUS = BusNames()
CLAIM_MS = 1000
REPLICA_PREFIX = f"SERVE_REPLICA::{APP_NAME}#StreamConsumer#"


@pytest.fixture(scope="module")
def app(ray_local, redis_server, tmp_path_factory) -> Iterator[dict[str, Any]]:  # noqa: F811
    root = tmp_path_factory.mktemp("bus")
    rewards = RewardRegistry(str(root / "registry"))  # beside the world model the app registers and serves
    rewards.register(fit(space_spec(make_env("Nav2D-v0"), "Nav2D-v0"), 1.0))
    rewards.register(fit(space_spec(make_env("Nav2D-v0"), "Nav2D-v0"), -1.0))
    url, version = deploy_bus_app(root, redis_server.url, STATE, TELEMETRY, CLAIM_MS)
    client = redis.Redis.from_url(redis_server.url, socket_timeout=30)
    yield {"url": url, "logs": root / "logs", "redis": client, "redis_url": redis_server.url, "version": version}
    client.close()
    shutdown_app(STATE, TELEMETRY, telemetry_stream=BUS.telemetry)


class Agents:
    """Plan requests into the request stream, replies read from each agent's reply stream (a stream client)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.seen: dict[str, bytes] = {}  # per agent, the last reply read
        self.stale = 0
        """Replies skipped: a request answered twice (at least once delivery), the first already read."""

    def send(self, body: dict[str, Any]) -> bytes:
        return self.redis.xadd(BUS.requests, encode_request(body))

    def reply(self, agent_id: str, request_id: str | None = None, timeout_s: float = 20.0) -> StreamReply:
        """The agent's next reply (to ``request_id``: others are skipped)."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            got = self.redis.xread({BUS.reply(agent_id): self.seen.get(agent_id, b"0-0")}, count=1,
                                   block=max(int(left * 1000), 1))
            if not got:
                break
            entry_id, fields = got[0][1][0]
            self.seen[agent_id] = entry_id
            reply = decode_reply(fields)
            if request_id is None or reply.request_id == request_id:
                return reply
            self.stale += 1
        raise AssertionError(f"no reply for {agent_id} ({request_id}) within {timeout_s} s")


def _logged(app: dict[str, Any], agents: set[str], expected: int, timeout_s: float = 30.0) -> Any:
    """The logged transitions of ``agents`` once there are ``expected`` (the logger flushed until then)."""
    logger = ray.get_actor(TELEMETRY, namespace=NAMESPACE)
    deadline = time.monotonic() + timeout_s
    while True:
        ray.get(logger.flush.remote(timeout_s=10))
        logs = read_transitions(str(app["logs"]))
        mine = logs.select(np.flatnonzero(np.isin(logs.agent_id, list(agents))))
        if len(mine) >= expected or time.monotonic() > deadline:
            return mine
        time.sleep(0.5)


def _closed_loop(agents: Agents, names: list[str], steps: int) -> dict[str, list[StreamReply]]:
    """Each agent in its own Nav2D env for ``steps`` requests, every request answered before the next."""
    envs = {name: make_env("Nav2D-v0") for name in names}
    obs = {name: env.reset(seed=i)[0] for i, (name, env) in enumerate(envs.items())}
    reward: dict[str, float | None] = dict.fromkeys(names)
    episodes, replies = EpisodeSteps(), {name: [] for name in names}
    for _ in range(steps):
        bodies = [episodes.body(name, obs[name], reward=reward[name]) for name in names]
        for body in bodies:
            agents.send(body)
        for body in bodies:
            name = body["agent_id"]
            reply = agents.reply(name, body["request_id"])
            assert reply.ok, reply
            replies[name].append(reply)
            episodes.settle([body], [reply.body])
            obs[name], reward[name], *_ = envs[name].step(np.asarray(reply.body["action"], np.float32))
    return replies


def test_a_closed_loop_through_the_bus_is_answered_and_logged_once(app) -> None:
    agents, names, steps = Agents(app["redis"]), [f"loop-{i}" for i in range(4)], 6
    replies = _closed_loop(agents, names, steps)
    assert all(r.body["model_version"] == app["version"] and len(r.body["action"]) == 2 and not r.body["replayed"]
               for rs in replies.values() for r in rs)
    mine = _logged(app, set(names), len(names) * (steps - 1))
    keys = set(zip(mine.agent_id.tolist(), mine.eps_id.tolist(), mine.t.tolist()))
    assert len(mine) == len(keys) == len(names) * (steps - 1), sorted(keys)  # each closed transition once
    assert sorted(mine.t[mine.agent_id == "loop-0"].tolist()) == list(range(steps - 1))
    models = requests.get(app["url"] + "/v1/models", timeout=10).json()
    bus = models["bus"]
    assert bus["answered"] > 0 and bus["dead_letters"] == 0 and bus["consumer"]
    health = requests.get(app["url"] + "/healthz", timeout=10).json()
    assert health["status"] == "ok" and "bus_error" not in health  # none: left out


def _acknowledged(client: redis.Redis, timeout_s: float = 10.0) -> None:
    """Wait until the consumers hold no request unacknowledged (its effects are written)."""
    deadline = time.monotonic() + timeout_s
    while client.xpending(BUS.requests, BUS.plan_group)["pending"]:
        assert time.monotonic() < deadline, "requests still pending"
        time.sleep(0.02)


def test_a_resent_request_is_answered_from_the_record_and_logged_once(app) -> None:
    agents, agent = Agents(app["redis"]), "resend-0"
    first = {"agent_id": agent, "observation": [0.1] * 6, "t": 0, "request_id": "resend-a"}
    agents.send(first)
    action = agents.reply(agent, "resend-a").body["action"]
    body = {"agent_id": agent, "observation": [0.2] * 6, "t": 1, "reward": -1.0, "prev_action": action,
            "request_id": "resend-b"}
    agents.send(body)
    answer = agents.reply(agent, "resend-b")
    _acknowledged(app["redis"])  # an agent times out seconds later, long after its request was acknowledged
    agents.send(body)  # the agent timed out and sent it again, same request_id
    again = agents.reply(agent, "resend-b")
    assert again.request_id == "resend-b" and again.body["replayed"] and not answer.body["replayed"]
    assert again.body["plan_id"] == answer.body["plan_id"] and again.body["action"] == answer.body["action"]
    time.sleep(1.0)  # a duplicate, if any, would be on its way to the logs by now
    mine = _logged(app, {agent}, 1)
    assert len(mine) == 1 and mine.t.tolist() == [0] and mine.rewards.tolist() == [-1.0]


def test_bad_messages_are_dead_lettered_with_reasons_and_good_traffic_is_answered(app) -> None:
    agents = Agents(app["redis"])
    good = {"agent_id": "bad-good", "observation": [0.0] * 6, "request_id": "g1"}
    bad = {b"{not json": None,
           encode_request({"agent_id": "bad-short", "observation": [0.0] * 5})[FIELD]: "bad-short",
           b'{"agent_id": "bad-nan", "observation": [NaN, 0, 0, 0, 0, 0]}': "bad-nan",
           encode_request({"agent_id": "bad-obj", "observation": [0.0] * 6, "objective": {"name": "speed"}})[FIELD]:
               "bad-obj"}
    ids = {app["redis"].xadd(BUS.requests, {FIELD: payload}): agent for payload, agent in bad.items()}
    agents.send(good)
    assert agents.reply("bad-good").ok
    for agent in ("bad-short", "bad-nan", "bad-obj"):
        reply = agents.reply(agent)
        assert reply.status == 422 and reply.body["error"], reply
    letters = {}
    deadline = time.monotonic() + 10
    while len(letters) < len(ids) and time.monotonic() < deadline:
        letters = {f[b"id"]: f[b"reason"].decode() for _, f in app["redis"].xrange(BUS.request_dead_letters)
                   if f[b"id"] in ids}
        time.sleep(0.1)
    reasons = {ids[entry_id]: reason for entry_id, reason in letters.items()}
    assert reasons[None].startswith("not JSON")
    assert reasons["bad-short"].startswith("observation: has 5 values, model")
    assert reasons["bad-nan"].startswith("observation.0: ")
    assert reasons["bad-obj"].startswith("objective.name: ")
    pending = app["redis"].xpending_range(BUS.requests, BUS.plan_group, min="-", max="+", count=100)
    assert not {p["message_id"] for p in pending} & set(ids)  # acknowledged


def test_a_plan_request_asking_why_gets_the_explanation_in_its_reply(app) -> None:
    # The bus's /v1/explain: the same body, for the decision just served, in the agent's own reply.
    agents = Agents(app["redis"])
    agents.send({"agent_id": "bus-why", "observation": [0.1] * 6, "request_id": "w1", "deadline_ms": 60_000,
                 "explain": {"proposals": [[0.5, 0.5]]}})  # planned however loaded the machine: this is about why
    reply = agents.reply("bus-why", "w1")
    assert reply.ok and reply.body["decision"] == "planned", reply
    explanation = reply.body["explanation"]
    assert explanation["plan_id"] == reply.body["plan_id"] and explanation["served"]["action"] == reply.body["action"]
    assert len(explanation["proposals"]) == 1 and len(explanation["chosen"]["trajectory"][0]) == 6
    agents.send({"agent_id": "bus-why", "observation": [0.1] * 6, "request_id": "w2", "mode": "policy"})
    refused = agents.reply("bus-why", "w2")
    assert refused.status == 422 and refused.body["error"].startswith("mode: "), refused


def _consumer_replicas() -> dict[str, Any]:
    """The StreamConsumer replicas' actors by consumer name (the replica id, after the last '#')."""
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(REPLICA_PREFIX)]
    return {name.rsplit("#", 1)[1]: ray.get_actor(name, namespace="serve") for name in names}


def test_a_killed_replicas_pending_requests_are_claimed_and_answered(app) -> None:
    client, agents = app["redis"], Agents(app["redis"])
    replicas = _consumer_replicas()
    assert len(replicas) == 2
    victim, actor = next(iter(replicas.items()))
    # A fleet in a closed loop meanwhile: none of its requests may go unanswered.
    waits: list[float] = []
    errors: list[str] = []
    stop = threading.Event()

    def fleet(name: str) -> None:
        mine, t = Agents(redis.Redis.from_url(app["redis_url"], socket_timeout=30)), 0
        while not stop.is_set():
            start = time.monotonic()
            mine.send({"agent_id": name, "observation": [0.05 * t] * 6, "t": t, "request_id": f"{name}-{t}"})
            try:
                reply = mine.reply(name, f"{name}-{t}")
            except AssertionError as err:
                errors.append(str(err))
                return
            if not reply.ok:
                errors.append(f"{name}: {reply}")
            waits.append(time.monotonic() - start)
            t += 1

    threads = [threading.Thread(target=fleet, args=(f"kill-{i}",), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    ray.kill(actor, no_restart=True)
    # What the killed replica had read and not acknowledged, made certain: requests it took just before dying.
    pipe = client.pipeline(transaction=True)
    for i in range(3):
        pipe.xadd(BUS.requests, encode_request({"agent_id": f"orphan-{i}", "observation": [0.0] * 6}))
    pipe.xreadgroup(BUS.plan_group, victim, {BUS.requests: ">"})
    *added, taken = pipe.execute()
    assert set(added) <= {entry_id for entry_id, _ in taken[0][1]}  # with any fleet request not yet read
    start = time.monotonic()
    for i in range(3):
        assert agents.reply(f"orphan-{i}", timeout_s=10).ok
    claimed_in = time.monotonic() - start
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(20)
    # claimed once idle for CLAIM_MS, by a claim every CLAIM_MS / 2, then one cycle
    assert claimed_in < 1.5 * CLAIM_MS / 1000 + 2.0
    assert not errors and waits and max(waits) < 1.5 * CLAIM_MS / 1000 + 2.0, (errors, max(waits, default=None))


# -- without Ray: the replica's start and health, the ingress's view of the bus ------------------
class _Store:
    """Agent-state shards that know ``writers`` live writers."""

    def __init__(self, writers: int) -> None:
        self.writers, self.leases = writers, 0

    async def lease(self, writer_id: str, lease_s: float) -> int:
        self.leases += 1
        return self.writers


def _replica(monkeypatch: pytest.MonkeyPatch, store: _Store, redis_url: str) -> Any:
    """A StreamConsumer as a replica starts it, on fakes for Serve, the shards and telemetry."""
    import serving.stream_consumer as module

    monkeypatch.setattr(module, "serve", SimpleNamespace(get_replica_context=lambda: SimpleNamespace(
        replica_tag="r1")))
    monkeypatch.setattr(module, "start_state_shards", lambda cfg, detached: store)
    monkeypatch.setattr(module, "start_telemetry", lambda cfg: (None, None))
    monkeypatch.setattr(module, "serving_metrics", lambda: None)
    replica = module.StreamConsumer.__new__(module.StreamConsumer)
    return replica, module.StreamConsumer.__init__(replica, planner=None, shadow=None, config=AppConfig(
        model="m", redis_url=redis_url, bus_prefix=f"t{uuid.uuid4().hex[:8]}").to_dict())


@pytest.mark.parametrize("writers, waits", [(1, False), (2, True)])
def test_a_replica_joining_other_writers_reads_only_after_their_next_lease_renewal(
        monkeypatch, redis_server, writers: int, waits: bool) -> None:  # noqa: F811
    from serving.engine_lease import JOIN_S

    async def main() -> tuple[float, Any]:
        store = _Store(writers)
        replica, init = _replica(monkeypatch, store, redis_server.url)
        start = time.monotonic()
        await init
        started = time.monotonic() - start
        assert store.leases >= 1 and replica.loop._main is not None
        await replica.check_health()
        await replica.__del__()
        return started, await replica.stats()

    started, stats = asyncio.run(main())
    assert (started >= JOIN_S) == waits and stats.consumer == "r1"


def test_a_replica_whose_loop_ended_fails_its_health_check(monkeypatch, redis_server) -> None:  # noqa: F811
    async def main() -> str:
        replica, init = _replica(monkeypatch, _Store(1), redis_server.url)
        await init

        async def bug() -> None:
            raise KeyError("a bug")

        replica.loop._read = bug
        await asyncio.sleep(1.0)  # the blocking read in progress returns, the next one fails
        with pytest.raises(RuntimeError) as failed:
            await replica.check_health()
        await replica.__del__()
        return str(failed.value)

    assert asyncio.run(main()) == "the stream consumer's loop ended: KeyError: 'a bug'"


@pytest.mark.parametrize("stats, expected", [
    (None, "stream consumer unreachable: ConnectionError: replica died"),
    ({"unreachable_s": 12.3, "last_error": "ConnectionError: refused"},
     "Redis unreachable for 12 s: ConnectionError: refused"),
    ({}, None)])
def test_the_ingress_is_degraded_while_the_bus_cannot_be_read(monkeypatch, stats: dict | None,
                                                              expected: str | None) -> None:
    from serving.consumer_loop import BusStats
    from serving.front import Refreshed
    from tests.serving.test_ingress_init import _ingress, _remote, _spec

    async def fetch() -> BusStats:
        if stats is None:
            raise ConnectionError("replica died")
        fields = dict.fromkeys(("read", "answered", "replayed", "rejected", "dead_letters", "claimed", "batches",
                                "unsettled", "errors"), 0)
        return BusStats(consumer="r1", **fields, lag=0, pending=0, **({"unreachable_s": None, "last_error": None}
                                                                       | stats))

    ingress = _ingress(monkeypatch)
    ingress.consumer = SimpleNamespace(stats=_remote(fetch))
    ingress._spec, ingress._bus = Refreshed(_spec, 2.0, "model spec"), Refreshed(ingress._fetch_bus, 2.0, "bus")

    async def main() -> dict[str, Any]:
        ingress._bus.peek()
        await asyncio.sleep(0.01)  # the background refresh of the consumer's stats
        return await ingress.healthz()

    health = asyncio.run(main())
    assert health["bus_error"] == expected and health["status"] == ("degraded" if expected else "ok")


# Reward models named by requests (two registered beside the served world model), over HTTP and the bus.
OBS = [0.1] * 6


def _stream_reply(client: redis.Redis, body: dict[str, Any], timeout_s: float = 20.0) -> Any:
    client.xadd(BUS.requests, encode_request(body))
    got = client.xread({BUS.reply(body["agent_id"]): b"0-0"}, count=1, block=int(timeout_s * 1000))
    assert got, f"no reply for {body['agent_id']} within {timeout_s} s"
    return decode_reply(got[0][1][0][1])


def test_the_served_model_lists_the_reward_models_that_fit(app) -> None:
    models = requests.get(app["url"] + "/v1/models", timeout=30).json()
    assert models["production"]["reward_models"] == ["r1.0.0", "r1.1.0"], models


def test_an_http_request_naming_a_reward_model_is_planned_with_it(app) -> None:
    r = requests.post(app["url"] + "/v1/plan", json={"agent_id": "h1", "observation": OBS, "reward_model": "r1.1.0"},
                      timeout=30)
    assert r.status_code == 200 and r.json()["reward_model"] == "r1.1.0", r.text
    r = requests.post(app["url"] + "/v1/plan", json={"agent_id": "h2", "observation": OBS}, timeout=30)
    assert r.status_code == 200 and "reward_model" not in r.json(), r.text  # the world model's own reward


def test_an_unknown_reward_model_is_a_422_naming_it(app) -> None:
    deadline = time.monotonic() + 10
    while True:  # the ingress refreshes the served spec every 2 s
        r = requests.post(app["url"] + "/v1/plan", json={"agent_id": "h3", "observation": OBS,
                                                          "reward_model": "r9.0.0"}, timeout=30)
        if r.status_code == 422 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 422 and r.json()["error"].startswith("reward_model: 'r9.0.0' is not a registered"), r.text


def test_the_bus_takes_the_field_and_refuses_an_unknown_name(app) -> None:
    agent = f"s{uuid.uuid4().hex[:8]}"
    reply = _stream_reply(app["redis"], {"agent_id": agent, "observation": OBS, "reward_model": "r1.0.0"})
    assert reply.status == 200 and reply.body["reward_model"] == "r1.0.0", reply
    other = f"s{uuid.uuid4().hex[:8]}"
    reply = _stream_reply(app["redis"], {"agent_id": other, "observation": OBS, "reward_model": "r9.0.0"})
    assert reply.status == 422 and "reward_model: 'r9.0.0'" in reply.body["error"], reply
