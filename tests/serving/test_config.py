"""The shipped Serve config is valid for `serve deploy`, app settings validate themselves, and the Ray
environment and event loop that the endpoint and its simulated fleet run with."""

from __future__ import annotations

import asyncio
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
    ({"model": "m", "token": "s\u00e9same"}, "token: a bearer token is letters, digits"),
    ({"model": "m", "token": "two words"}, "token: a bearer token is letters, digits"),
])
def test_bad_app_settings_name_the_field(args: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AppConfig.from_dict(args)


def test_bearer_tokens_are_rfc_6750_b64tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    # ASCII only: the fast route compares the header's bytes, FastAPI's route its latin-1 decoded text.
    assert AppConfig(model="m", token="a-Z_0.9~+/x==").bearer_token == "a-Z_0.9~+/x=="
    monkeypatch.setenv("FLEETWM_API_TOKEN", "env-token")
    assert AppConfig(model="m").bearer_token == "env-token"
    monkeypatch.setenv("FLEETWM_API_TOKEN", "caf\u00e9")
    with pytest.raises(ValueError, match=r"\$FLEETWM_API_TOKEN: a bearer token") as err:
        AppConfig(model="m").bearer_token
    assert "caf" not in str(err.value)  # the token itself is never echoed
    monkeypatch.delenv("FLEETWM_API_TOKEN")
    assert AppConfig(model="m", token="").bearer_token is None


def test_serve_env_selects_the_proxy_and_keeps_handlers_on_the_replicas_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.deploy import serve_env

    for key in ("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP",
                "RAY_SERVE_HAPROXY_METRICS_ENABLED"):
        monkeypatch.delenv(key, raising=False)
    env = serve_env()
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and serve_env("python")["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == env["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "0"
    assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"
    monkeypatch.setenv("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "1")  # a user's own choice stands
    assert serve_env()["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "1"
    with pytest.raises(ValueError, match="proxy must be one of haproxy, python"):
        serve_env("nginx")


def test_the_fleet_loop_runs_a_coroutine_to_its_result() -> None:
    from serving.fleet import run_loop

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert run_loop(answer()) == 42
