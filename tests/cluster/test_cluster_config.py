"""ray_cluster.yaml passes Ray's own cluster-config validator and describes the node types fleetwm needs,
and the fleet bus's redis-server on the head that serving/serve_config.yaml points the app at."""

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


REDIS_PORT = "6380"
"""The head's redis-server port: beside Ray's GCS (6379), never on it."""


def test_the_head_runs_the_fleet_bus_redis_before_ray_and_stops_it_after_ray_stop(config: dict) -> None:
    setup = " ".join(config["head_setup_commands"])
    # Debian's package, whose own service would take 6379 (the GCS port), disabled.
    assert "apt-get install" in setup and "redis-server" in setup and "systemctl disable --now redis-server" in setup
    head = config["head_start_ray_commands"]
    (start,) = [i for i, c in enumerate(head) if "redis-server" in c and "--port" in c]
    (stop,) = [i for i, c in enumerate(head) if "redis-cli" in c and "shutdown" in c]
    ray_stop = head.index("ray stop")
    ray_start = next(i for i, c in enumerate(head) if "ray start --head" in c)
    assert ray_stop < stop < start < ray_start
    server = head[start]
    assert f"--port {REDIS_PORT}" in server and "--port=6379" in head[ray_start]
    assert "--appendonly yes" in server and "--dir ~/fleetwm-data/redis" in server and "--daemonize yes" in server
    # Never on a public interface, and a password kept off the command line.
    assert '--bind "127.0.0.1 $(hostname -I' in server and "0.0.0.0" not in server
    assert "requirepass" in server and "~/.fleetwm/redis_password" in server and "umask 077" in server
    assert "--requirepass" not in server
    assert config["file_mounts"]["~/.fleetwm/redis_password"] == "~/.fleetwm/redis_password"
    assert not any("redis-server" in c for c in config["worker_start_ray_commands"])


def test_the_serve_config_points_the_app_at_the_heads_redis() -> None:
    from urllib.parse import urlsplit

    serve_config = yaml.safe_load((CONFIG.parent / "serving" / "serve_config.yaml").read_text())
    (app,) = serve_config["applications"]
    url = urlsplit(app["args"]["redis_url"])
    assert url.scheme == "redis" and str(url.port) == REDIS_PORT and url.password and url.path == "/0"
