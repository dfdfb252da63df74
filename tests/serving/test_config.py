"""The shipped Serve config is valid for `serve deploy`, and app settings validate themselves."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serving.config import AppConfig

CONFIG = Path(__file__).resolve().parents[2] / "serving" / "serve_config.yaml"


def test_serve_config_passes_serves_schema_and_our_own() -> None:
    raw = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    assert app.import_path == "serving.app:build"
    cfg = AppConfig.from_dict(app.args)
    assert cfg.model == "production" and cfg.state.shards == 8
    assert cfg.max_ongoing_requests >= cfg.batching["max_batch_size"]


@pytest.mark.parametrize("args, message", [
    ({"model": "production", "colour": 1}, "colour"),
    ({"model": ""}, "model"),
    ({"model": "m", "batching": {"max_batch_size": 0}}, "max_batch_size"),
    ({"model": "m", "batching": {"max_batch_size": 512}, "max_ongoing_requests": 100}, "max_ongoing_requests"),
    ({"model": "m", "default_deadline_ms": -1}, "default_deadline_ms"),
])
def test_bad_app_settings_name_the_field(args: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AppConfig.from_dict(args)
