"""A warehouse floor served end to end: `wm fleet --env Warehouse-v1`'s driver against the real app on one Ray.

Every robot of the floor asks each tick (one request per robot over HTTP, the whole tick as one batch, or
through the fleet bus on a real Redis); the robots of the site are planned jointly; the served transitions
land in the logs with the site as their scene, so the learners can rebuild each tick of the floor.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import numpy as np
import pytest
import ray
import requests

from actors.common import NAMESPACE
from actors.ports import free_port
from actors.state import StateConfig
from serving.config import AppConfig
from serving.deploy import deploy, shutdown_app
from serving.fleet_config import FleetConfig
from serving.warehouse_fleet import drive_floor
from tests.ray_fixtures import ray_local  # noqa: F401
from tests.redis_fixtures import redis_server  # noqa: F401
from tests.warehouse_fixtures import warehouse_models  # noqa: F401
from worldmodel.data import read_transitions
from worldmodel.envs.warehouse import OBS_DIM, WAREHOUSE_ID

pytestmark = pytest.mark.slow
STATE = StateConfig(shards=1, name="test-warehouse-state")
ROBOTS = 4


@pytest.fixture(scope="module")
def app(ray_local, redis_server, warehouse_models, tmp_path_factory) -> Iterator[dict[str, Any]]:  # noqa: F811
    logs = tmp_path_factory.mktemp("served") / "logs"
    url = deploy(warehouse_models["fleet"], log_uri=str(logs), port=free_port(), state=STATE,
                 redis_url=redis_server.url)
    yield {"url": url, "logs": logs, "redis": redis_server.url}
    shutdown_app(STATE)


def _drive(app: dict[str, Any], prefix: str, **settings: Any) -> Any:
    config = FleetConfig(url=app["url"], env_id=WAREHOUSE_ID, agents=ROBOTS, hz=10.0, seconds=1.5,
                         agent_prefix=prefix, **settings)
    return asyncio.run(drive_floor(config))


@pytest.mark.parametrize("prefix, settings", [("each-", {}), ("batch-", {"batch": True}),
                                              ("bus-", {"transport": "redis"})])
def test_a_floor_drives_through_the_endpoint(app: dict[str, Any], prefix: str, settings: dict) -> None:
    if settings.get("transport") == "redis":
        settings = {**settings, "redis_url": app["redis"]}
    result = _drive(app, prefix, **settings)
    assert result.errors == 0, result.errors_by_kind
    assert result.floor is not None and result.floor.ticks >= 5
    assert result.requests == ROBOTS * result.floor.ticks
    assert result.floor.collisions_per_robot_hour >= 0 and result.floor.shelf_collisions >= 0


def test_a_site_is_planned_jointly_and_logged_as_a_scene(app: dict[str, Any]) -> None:
    _drive(app, "logged-")
    logger = ray.get_actor(AppConfig.telemetry_name, namespace=NAMESPACE)
    ray.get(logger.flush.remote())
    data = read_transitions(str(app["logs"]))
    mine = data.select(np.flatnonzero(np.char.startswith(data.agent_id.astype(str), "logged-")))
    assert len(mine) >= ROBOTS * 3
    assert set(mine.scene.tolist()) == {"logged-floor"}
    ticks = {int(t): 0 for t in mine.t}
    for t in mine.t:
        ticks[int(t)] += 1
    assert max(ticks.values()) == ROBOTS  # a tick of the floor: every robot's row


def test_the_api_names_what_a_floor_cannot_take(app: dict[str, Any]) -> None:
    body = {"agent_id": "r-1", "observation": [0.0] * OBS_DIM, "site": "floor 1"}
    answer = requests.post(app["url"] + "/v1/plan", json=body, timeout=30)
    assert answer.status_code == 422 and "site" in answer.json()["error"]
    body = {"agent_id": "r-1", "observation": [0.0] * OBS_DIM, "objective": {"name": "goal"}}
    answer = requests.post(app["url"] + "/v1/plan", json=body, timeout=30)
    assert answer.status_code == 422 and "objective.name" in answer.json()["error"]
    models = requests.get(app["url"] + "/v1/models", timeout=30).json()["production"]
    assert models["sites"] is True and models["planner"] == "coordinated"
