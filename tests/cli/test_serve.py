"""`wm serve` as a user runs it: a subprocess with its own local Ray behind HAProxy, stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from cluster.runtime import free_port
from tests.worldmodel.conftest import TINY_MODEL, TINY_TRAIN
from worldmodel.artifact import save_model
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.collect import collect
from worldmodel.training import train_world_model

pytestmark = pytest.mark.slow


def test_wm_serve_answers_then_stops_cleanly_with_one_json_object(tmp_path) -> None:
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    model_dir = save_model(train_world_model(collect("Nav2D-v0", episodes=6, seed=0), spec, TINY_MODEL, TINY_TRAIN),
                           tmp_path / "model")
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "cluster", "serve", "--model", str(model_dir), "--port",
                             str(port), "--horizon", "6", "--samples", "16", "--log-dir", str(tmp_path / "logs"),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        r = requests.post(f"{url}/v1/plan", json={"agent_id": "cli", "observation": [0.0] * 6}, timeout=10)
        assert r.status_code == 200 and len(r.json()["action"]) == 2
        assert requests.get(f"{url}/openapi.json", timeout=10).json()["info"]["title"].startswith("fleetwm")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err[-2000:]
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    result = json.loads(lines[0])
    assert result["url"] == url and result["proxy"] == "haproxy"
