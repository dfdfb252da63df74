"""serving/serve_config.yaml (the cluster deployment) names only settings the app knows, with valid values,
and keeps agent state across shard crashes; the app's bus settings are checked when it is configured."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving.config import AppConfig

CONFIG = Path(__file__).resolve().parents[2] / "serving" / "serve_config.yaml"


def test_the_apps_arguments_build_an_app_config() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    (app,) = config["applications"]
    assert app["import_path"] == "serving.app:build" and app["name"] == "fleetwm"
    cfg = AppConfig.from_dict(app["args"])  # unknown or invalid settings raise here
    assert cfg.state.snapshot_uri and cfg.state.snapshot_interval_s <= 1.0
    # Settings it leaves out keep AppConfig's defaults, decided in one place.
    assert "default_deadline_ms" not in app["args"] and cfg.default_deadline_ms == AppConfig("m").default_deadline_ms


@pytest.mark.parametrize(("setting", "message"), [
    ({"redis_url": "http://:s3cret@head:6380/0"}, "redis_url must start with redis://, rediss://, unix://, "
                                                   "got 'http://:***@head:6380/0'"),
    ({"bus_prefix": ""}, "bus_prefix must be a non-empty name"),
    ({"bus_prefix": "fleet a"}, "bus_prefix must be a non-empty name"),
    ({"consumer_replicas": 0}, "consumer_replicas must be >= 1, got 0"),
    ({"claim_idle_ms": 0}, "claim_idle_ms must be >= 1"),
    ({"read_count": 0}, "read_count must be >= 1")])
def test_bus_settings_are_checked_in_one_line_without_the_password(setting: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        AppConfig("m", **setting)
    assert str(err.value).startswith(message) and "s3cret" not in str(err.value)
