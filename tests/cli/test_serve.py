"""`wm serve` as a user runs it: subprocesses, each with its own local Ray behind HAProxy, side by side
on one machine, stopped by SIGTERM within their bound even when the logger cannot write; by default each
owns a redis-server for its fleet bus, which stops with it and keeps what was not logged."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

from actors.ports import free_ports
from actors.redis_server import RedisServer, check_reachable
from actors.streams import BUS
from tests.worldmodel.conftest import TINY_MODEL, TINY_TRAIN
from worldmodel.artifact import save_model
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.collect import collect
from worldmodel.training import train_world_model

pytestmark = pytest.mark.slow

STOP_BOUND_S = 60.0
"""SIGTERM to exit: the app's shutdown bound (30 s) plus the local Ray's own stop, on a busy machine."""


def _start(model_dir: Path, port: int, cache: Path, *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cluster", "serve", "--model", str(model_dir), "--port", str(port),
                             "--horizon", "6", "--samples", "16", "--json", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled", "XDG_CACHE_HOME": str(cache)})


def _redis_servers_in(data_dir: Path) -> list[int]:
    """Processes running redis-server in ``data_dir`` (it works in its --dir; its title hides its arguments)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if (Path(f"/proc/{pid}/comm").read_text().strip() == "redis-server"
                    and os.readlink(f"/proc/{pid}/cwd") == str(data_dir)):
                found.append(int(pid))
        except OSError:  # another user's process, or one that just ended
            continue
    return found


def _unlogged_telemetry(data_dir: Path) -> int:
    """Entries of the telemetry stream that the app's logger group has not acknowledged (pending or unread),
    read from the AOF a stopped `wm serve` left in ``data_dir``."""
    with RedisServer(data_dir) as server:
        client = redis.Redis.from_url(server.url)
        groups = client.xinfo_groups(BUS.telemetry) if client.exists(BUS.telemetry) else []
        client.close()
    return sum(g["pending"] + (g["lag"] or 0) for g in groups if g["name"].decode() == BUS.ingest_group)


def _wait_healthy(procs: dict[str, subprocess.Popen[str]], timeout_s: float = 240) -> None:
    """Wait until every url's /healthz answers 200 (either status), failing with a server's stderr if it died."""
    waiting, deadline = set(procs), time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline:
        for url in sorted(waiting):
            assert procs[url].poll() is None, procs[url].communicate()[1][-3000:]
            try:
                if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                    waiting.discard(url)
            except requests.RequestException:
                pass
        time.sleep(0.5)
    assert not waiting, f"not healthy after {timeout_s} s: {waiting}"


def _plan_two_steps(url: str) -> None:
    """Two observations of one agent, the second reporting the action taken: one transition to log."""
    first = requests.post(f"{url}/v1/plan", json={"agent_id": "cli", "observation": [0.0] * 6, "t": 0,
                                                  "request_id": "r0"}, timeout=30)
    assert first.status_code == 200 and len(first.json()["action"]) == 2, first.text
    second = requests.post(f"{url}/v1/plan", json={"agent_id": "cli", "observation": [0.1] * 6, "t": 1,
                                                   "reward": -1.0, "prev_action": first.json()["action"],
                                                   "request_id": "r1"}, timeout=30)
    assert second.status_code == 200, second.text


def test_two_servers_side_by_side_answer_and_stop_within_their_bound(tmp_path: Path) -> None:
    spec = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    model_dir = save_model(train_world_model(collect("Nav2D-v0", episodes=6, seed=0), spec, TINY_MODEL, TINY_TRAIN),
                           tmp_path / "model")
    ports = free_ports(2)
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    broken_logs, state, cache = tmp_path / "logs-a", tmp_path / "state-a", tmp_path / "cache"
    # The first on the default bus (a redis-server of its own), the second over HTTP only.
    procs = {urls[0]: _start(model_dir, ports[0], cache, "--log-dir", str(broken_logs), "--state-dir", str(state)),
             urls[1]: _start(model_dir, ports[1], cache, "--log-dir", str(tmp_path / "logs-b"), "--no-state-dir",
                             "--redis", "none")}
    results = {}
    try:
        _wait_healthy(procs)
        # The first server's log location stops being writable after its start (checked then).
        shutil.rmtree(broken_logs)
        broken_logs.write_text("not a directory any more")
        for url in urls:
            _plan_two_steps(url)
        assert requests.get(f"{urls[1]}/openapi.json", timeout=10).json()["info"]["title"].startswith("fleetwm")
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        for url, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=STOP_BOUND_S + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            results[url] = (proc.returncode, out, err, time.monotonic() - sent)
    for url, (code, out, err, stopped_after) in results.items():
        assert code == 0, err[-3000:]
        assert stopped_after < STOP_BOUND_S, f"{url} took {stopped_after:.0f} s to stop"
        lines = out.strip().splitlines()
        assert len(lines) == 1, out
        results[url] = json.loads(lines[0])
        assert results[url]["url"] == url and results[url]["proxy"] == "haproxy"
        bus = "fleet bus at redis://127.0.0.1:" if url == urls[0] else "no fleet bus (--redis none)"
        assert f"wm serve: fleet endpoint at {url} (OpenAPI at {url}/docs), {bus}" in err, err[-3000:]
    broken, healthy = results[urls[0]], results[urls[1]]
    assert broken["not_written"] >= 1 and broken["telemetry"]["last_error"], broken
    assert any("not written" in p for p in broken["problems"]), broken
    assert broken["state_dir"] == str(state) and any(state.iterdir())  # agent state was snapshotted
    assert healthy["telemetry"]["written"] >= 1 and healthy["not_written"] == 0 and not healthy["problems"], healthy
    assert healthy["state_dir"] is None and healthy["redis"] is None and healthy["unwritten_pending_in"] is None
    # The bus's redis-server stopped with its command, leaving its AOF; what the logger could not write waits
    # there, pending for the next logger.
    data_dir = cache / "fleetwm" / "redis" / f"127.0.0.1-{ports[0]}"
    assert broken["redis"]["owned"] and broken["redis"]["data_dir"] == str(data_dir), broken
    assert not _redis_servers_in(data_dir)
    with pytest.raises(ValueError, match="no Redis answers"):
        check_reachable(broken["redis"]["url"], timeout_s=1.0)
    assert list((data_dir / "appendonlydir").glob("*.aof"))
    assert broken["unwritten_pending_in"] == BUS.telemetry
    assert any("still pending in Redis stream" in p for p in broken["problems"]), broken
    assert _unlogged_telemetry(data_dir) >= 1
