"""A served fleet endpoint whose traffic moves every metric the alert rules and the dashboard read.

The app serves a tiny Nav2D model on a local Ray whose metrics agent exports on a known port, with the fleet
bus (a real redis-server) and telemetry to disk. ``Traffic`` drives it from a thread: agents whose observations
jump between two far-apart points (so the served prediction MSE is far over 0.5), one with a speed limit it
keeps breaking (observed violations), one with a deadline no plan meets (fallbacks), one over the bus.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

from actors.state import StateConfig
from serving.stream_client_sync import StreamClient

STATE = StateConfig(shards=1, name="monitoring-test-state")
TELEMETRY = "monitoring-test-telemetry"
FAR_APART = (np.zeros(6), np.full(6, 3.0))
"""Observations an agent alternates between: a model predicts the next near the last, 9 off per dim (MSE ~9),
and the second is at speed ~4.2, over the speed-limited agent's limit."""
REWARDS = (1.0, -3.0)
"""The rewards agents report, in turn: both signs, -1 on average."""
AGENTS = {"mse": {}, "speeding": {"objective": {"name": "goal", "max_speed": 1.0}},
          "late": {"deadline_ms": 0.01}}
"""HTTP agents and the extra fields of their requests."""


@dataclass(frozen=True)
class LiveApp:
    url: str
    """The endpoint's base URL."""
    metrics_port: int
    """Ray's metrics export port on this node (Prometheus text at /metrics)."""
    redis_url: str

    def scrape(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text


def start_app(root: Path, redis_url: str) -> LiveApp:
    """Train a tiny model, start Ray (metrics reported every second) and deploy the app; Ray must not be running."""
    import ray

    from actors.ports import free_port
    from serving.deploy import deploy
    from tests.worldmodel.conftest import TINY_MODEL, TINY_TRAIN
    from worldmodel.artifact import save_model
    from worldmodel.envs import make_env, space_spec
    from worldmodel.envs.collect import collect
    from worldmodel.training import train_world_model

    metrics_port = free_port()
    ray.init(address="local", num_cpus=4, object_store_memory=128 * 2**20, include_dashboard=False,
             log_to_driver=False, _metrics_export_port=metrics_port,
             _system_config={"metrics_report_interval_ms": 1000})
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    model = train_world_model(collect("Nav2D-v0", episodes=4, seed=0), spec, TINY_MODEL, TINY_TRAIN)
    url = deploy(str(save_model(model, root / "model")), port=free_port(), state=STATE, telemetry_name=TELEMETRY,
                 log_uri=str(root / "logs"), redis_url=redis_url, consumer_replicas=1,
                 service={"plan": {"horizon": 4, "samples": 8}})
    return LiveApp(url, metrics_port, redis_url)


class Traffic:
    """Closed-loop agents driving the app from a thread until ``stop``; ``errors`` holds what went wrong."""

    def __init__(self, app: LiveApp) -> None:
        self.app, self.rounds, self.errors = app, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="monitoring-traffic")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_rounds(self, n: int, timeout_s: float = 60.0) -> None:
        """Wait until ``n`` rounds more have run (every agent stepped ``n`` times)."""
        goal, deadline = self.rounds + n, time.monotonic() + timeout_s
        while self.rounds < goal and not self.errors and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not self.errors and self.rounds >= goal, (self.rounds, goal, self.errors[:3])

    def _run(self) -> None:
        actions: dict[str, list[float]] = {}
        with requests.Session() as http, StreamClient(self.app.redis_url, timeout_s=30) as bus:
            t = 0
            while not self._stop.is_set():
                obs = FAR_APART[t % 2].tolist()
                reward = REWARDS[t % 2] if t else None
                step = {"t": t} | ({"reward": reward} if t else {})
                try:
                    for agent, extra in AGENTS.items():
                        body = {"agent_id": agent, "observation": obs, **step, **extra}
                        if t:
                            body["prev_action"] = actions[agent]
                        answer = http.post(f"{self.app.url}/v1/plan", json=body, timeout=30)
                        answer.raise_for_status()
                        actions[agent] = answer.json()["action"]
                    actions["bus"] = bus.plan("bus", obs, reward=reward, t=t,
                                              prev_action=actions.get("bus") if t else None)["action"]
                except Exception as err:  # handed to the test, which reports it
                    self.errors.append(f"round {t}: {type(err).__name__}: {err}")
                    return
                t += 1
                self.rounds = t
                time.sleep(0.05)
