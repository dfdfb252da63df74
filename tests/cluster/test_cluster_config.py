"""ray_cluster.yaml passes Ray's own cluster-config validator and describes the node types fleetwm needs."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG = Path(__file__).resolve().parents[2] / "ray_cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_validates_with_rays_validator(config: dict) -> None:
    # `ray up` fills in Ray's defaults for the provider, then validates against Ray's schema.
    validate_config(prepare_config(copy.deepcopy(config)))


def test_validator_rejects_a_broken_config(config: dict) -> None:
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["max_workers"] = "four"
    with pytest.raises(jsonschema.ValidationError, match="four"):
        validate_config(prepare_config(broken))


def test_node_types_and_auth(config: dict) -> None:
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert "cpu_worker" in types
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2
    assert any("pip install -e ." in c for c in config["setup_commands"])
