"""serving/serve_config.yaml (the cluster deployment) names only settings the app knows, with valid values,
and keeps agent state across shard crashes."""

from __future__ import annotations

from pathlib import Path

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
