"""The endpoint's metrics reach Prometheus through Ray's metrics agent (what the Ray dashboard shows)."""

from __future__ import annotations

import os
import time
from typing import Iterator

import pytest
import ray
import requests

from actors.ports import free_port
from actors.state import StateConfig
from serving.deploy import deploy, shutdown_app
from tests.worldmodel.conftest import TINY_MODEL, TINY_TRAIN
from worldmodel.artifact import save_model
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.collect import collect
from worldmodel.training import train_world_model

pytestmark = pytest.mark.slow
STATE = StateConfig(shards=1, name="metrics-test-state")
NAMES = ("fleetwm_request_latency_seconds", "fleetwm_batch_size", "fleetwm_plans_total",
         "fleetwm_ensemble_disagreement", "fleetwm_served_model_version", "fleetwm_bad_requests_total")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, int]]:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    if ray.is_initialized():
        ray.shutdown()
    metrics_port = free_port()
    ray.init(address="local", num_cpus=4, object_store_memory=128 * 2**20, include_dashboard=False, log_to_driver=False,
             _metrics_export_port=metrics_port)
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    model = train_world_model(collect("Nav2D-v0", episodes=6, seed=0), spec, TINY_MODEL, TINY_TRAIN)
    model_dir = save_model(model, tmp_path_factory.mktemp("metrics") / "model")
    url = deploy(str(model_dir), port=free_port(), state=STATE, service={"plan": {"horizon": 6, "samples": 8}})
    yield url, metrics_port
    shutdown_app(STATE)
    ray.shutdown()


def test_serving_metrics_are_exported_for_prometheus(served) -> None:
    url, metrics_port = served
    for i in range(12):
        assert requests.post(f"{url}/v1/plan", json={"agent_id": f"m{i % 3}", "observation": [0.1] * 6},
                             timeout=30).status_code == 200
    # Client errors: the model's check, FastAPI's validation, an unknown route.
    assert requests.post(f"{url}/v1/plan", json={"agent_id": "m", "observation": [0.1]}, timeout=30).status_code == 422
    assert requests.post(f"{url}/v1/plan", json={"observation": [0.1] * 6}, timeout=30).status_code == 422
    assert requests.get(f"{url}/v1/nothing-here", timeout=30).status_code == 404
    want = {"422": 2.0, "404": 1.0}
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline and not (all(n in text for n in NAMES) and _bad_requests(text) == want):
        time.sleep(2)  # the metrics agent exports every few seconds
        text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    missing = [n for n in NAMES if n not in text]
    assert not missing, missing
    assert _bad_requests(text) == want
    plans = [line for line in text.splitlines() if line.startswith("ray_fleetwm_plans_total{")]
    assert plans and float(plans[0].rsplit(" ", 1)[1]) >= 12


def _bad_requests(text: str) -> dict[str, float]:
    """``fleetwm_bad_requests_total`` by status, summed over the other tags."""
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ray_fleetwm_bad_requests_total{"):
            status = line.split('status="', 1)[1].split('"', 1)[0]
            counts[status] = counts.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts
