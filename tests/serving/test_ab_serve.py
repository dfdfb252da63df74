"""A live A/B test on a running endpoint: two registered versions serve a small fleet, each agent sticks to its
arm, both arms' totals reach the registry for `wm models compare`, and ending the test sends everyone back.

One app serves the module: production and the A/B candidate planner, following one registry, over HTTP and the
fleet bus (the stream consumer's engine splits its batches the same way).
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import numpy as np
import pytest
import requests

from actors.ports import free_port
from actors.state import StateConfig
from serving.ab import assign
from serving.ab_gate import live_comparison
from serving.deploy import deploy, shutdown_app
from serving.episodes import plan_body
from serving.stream_client_sync import StreamClient
from tests.ray_fixtures import ray_local  # noqa: F401
from tests.redis_fixtures import redis_server  # noqa: F401
from tests.worldmodel.conftest import TINY_MODEL, TINY_TRAIN
from worldmodel.config import TrainConfig
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.collect import collect
from worldmodel.registry import ModelRegistry
from worldmodel.training import train_world_model

pytestmark = pytest.mark.slow
STATE = StateConfig(shards=1, name="test-ab-state")
AGENTS = [f"ab-agent-{i}" for i in range(16)]
POLL_S = 0.2


@pytest.fixture(scope="module")
def app(ray_local, redis_server, tmp_path_factory) -> Iterator[dict[str, Any]]:  # noqa: F811
    root = tmp_path_factory.mktemp("ab")
    data = collect("Nav2D-v0", episodes=8, seed=0)
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    registry = ModelRegistry(str(root / "registry"))
    v1 = registry.register(train_world_model(data, spec, TINY_MODEL, TINY_TRAIN), stage="production")
    v2 = registry.register(train_world_model(data, spec, TINY_MODEL, TrainConfig(epochs=3, seed=1)))
    test = registry.start_ab(v2.version, 0.5)
    url = deploy("production", registry_uri=registry.uri, ab=True, port=free_port(), state=STATE, poll_s=POLL_S,
                 service={"plan": {"horizon": 8, "samples": 16}}, redis_url=redis_server.url)
    yield {"url": url, "registry": registry, "v1": v1.version, "v2": v2.version, "test": test,
           "redis_url": redis_server.url}
    shutdown_app(STATE)


def _step(app: dict, t: int, rng: np.random.Generator, last: dict[str, list[float]]) -> dict[str, str]:
    """One batch of every agent's step ``t`` (with the reward and action of step t - 1); their versions."""
    bodies = [plan_body(a, rng.uniform(-1, 1, 6), t=t, reward=None if t == 0 else -1.0,
                        prev_action=last.get(a) if t > 0 else None) for a in AGENTS]
    r = requests.post(app["url"] + "/v1/plan/batch", json={"requests": bodies}, timeout=60)
    assert r.status_code == 200, r.text
    answers = r.json()["responses"]
    last.update((a, ans["action"]) for a, ans in zip(AGENTS, answers))
    return {a: ans["model_version"] for a, ans in zip(AGENTS, answers)}


def test_both_arms_serve_their_agents_and_publish_their_totals(app) -> None:
    rng, last = np.random.default_rng(0), {}
    _step(app, 0, rng, last)  # the first batch starts the engine following the registry's test
    time.sleep(3 * POLL_S)
    arms = assign(app["test"].id, AGENTS, [None] * len(AGENTS), app["test"].share)
    expected = {a: app["v2"] if c else app["v1"] for a, c in zip(AGENTS, arms)}
    assert 0 < arms.sum() < len(AGENTS)
    for t in range(0, 4):  # a new episode at t = 0: the arm, not the record, decides
        assert _step(app, t, rng, last) == expected
    models = requests.get(app["url"] + "/v1/models", timeout=30).json()
    assert models["candidate"]["model_version"] == app["v2"] and models["ab"]["test"]["id"] == app["test"].id
    deadline, reward = time.monotonic() + 30, None
    while time.monotonic() < deadline:  # each engine publishes every few seconds
        metrics = {m.spec.name: m for m in live_comparison(app["registry"]).metrics}
        reward = metrics["reward"]
        if reward.candidate.n == arms.sum() and reward.production.n == (~arms).sum():
            break
        time.sleep(0.5)
    assert reward is not None and (reward.candidate.n, reward.production.n) == (arms.sum(), (~arms).sum())
    assert reward.candidate.mean == reward.production.mean == -1.0
    assert metrics["latency_ms"].candidate.n > 0 and metrics["prediction_mse"].production.n > 0


def test_agents_on_the_fleet_bus_are_served_by_their_arm(app) -> None:
    agents = [f"ab-bus-agent-{i}" for i in range(16)]
    arms = assign(app["test"].id, agents, [None] * len(agents), app["test"].share)
    assert 0 < arms.sum() < len(agents)
    rng = np.random.default_rng(2)
    with StreamClient(app["redis_url"], timeout_s=30) as client:
        client.plan("ab-bus-warm-up", rng.uniform(-1, 1, 6))  # the consumer's engine starts following the test
        time.sleep(3 * POLL_S)
        versions = [client.plan(a, rng.uniform(-1, 1, 6))["model_version"] for a in agents]
    assert versions == [app["v2"] if c else app["v1"] for c in arms]


def test_ending_the_test_sends_every_agent_to_production(app) -> None:
    app["registry"].end_ab()
    time.sleep(3 * POLL_S)
    rng, last = np.random.default_rng(1), {}
    assert set(_step(app, 0, rng, last).values()) == {app["v1"]}
