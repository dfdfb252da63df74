"""What an ingress replica builds, without Ray: its engine keeps a record cache at any replica count."""

from __future__ import annotations

import pytest

import serving.app as app_module
from serving.app import FleetIngress
from serving.config import AppConfig


@pytest.mark.parametrize("max_replicas", [1, 4])
def test_every_ingress_builds_a_record_cache_whose_use_its_writer_lease_decides(
        max_replicas: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "start_state_shards", lambda cfg, detached: object())
    monkeypatch.setattr(app_module, "_start_telemetry", lambda cfg: None)
    monkeypatch.setattr(app_module, "serving_metrics", lambda: None)
    cls = FleetIngress.__bases__[0]  # the class as written, under Serve's ASGI wrapper
    assert cls.__name__ == "FleetIngress"
    ingress = cls.__new__(cls)
    cfg = AppConfig(model="production", ingress_autoscaling={"min_replicas": 1, "max_replicas": max_replicas})
    cls.__init__(ingress, planner=None, shadow=None, config=cfg.to_dict())
    assert ingress.engine.cache is not None and ingress.engine.cache.ttl_s == cfg.state.ttl_s
    assert not ingress.engine.sole_writer  # used only once a lease renewal finds this engine the only writer
