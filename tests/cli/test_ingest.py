"""`wm ingest` as a user runs it: SIGKILLed mid-stream and restarted, nothing lost, nothing twice."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import redis

from actors import streams
from tests.actors.test_streams import assert_same, make_batch
from tests.cli.test_cli import _PROBE
from tests.redis_fixtures import redis_client, redis_server  # noqa: F401 (fixtures)
from worldmodel.data import list_log_files, read_transitions

from .helpers import run_json


def start_ingest(url: str, log_dir: Path) -> subprocess.Popen[str]:
    args = ["ingest", "--redis", url, "--log-dir", str(log_dir), "--consumer", "logger-1", "--flush-rows", "100",
            "--flush-s", "0.2", "--claim-idle-s", "5", "--json"]
    return subprocess.Popen([sys.executable, "-m", "cluster", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def logged_rows(log_dir: Path) -> int:
    return sum(pq.read_metadata(f).num_rows for f in list_log_files(str(log_dir)))


def wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigkill_mid_stream_then_restart_loses_and_repeats_nothing(redis_client: redis.Redis, redis_server,
                                                                   tmp_path: Path) -> None:
    sent = make_batch(3000, seed=11, agents=10)
    chunks = np.array_split(np.arange(3000), 30)
    logger = start_ingest(redis_server.url, tmp_path)
    killed_at = None
    for i, chunk in enumerate(chunks):
        streams.append_transitions(redis_client, sent.select(chunk))
        if killed_at is None and i >= 3:
            wait_for(lambda: logged_rows(tmp_path) >= 300)
            # Mid-stream, while the agents keep sending: some entries read, buffered or written but not acknowledged.
            logger.send_signal(signal.SIGKILL)
            logger.wait()
            killed_at = i
        time.sleep(0.01)
    assert killed_at is not None and logged_rows(tmp_path) < 3000
    logger = start_ingest(redis_server.url, tmp_path)
    wait_for(lambda: logged_rows(tmp_path) >= 3000)
    group = lambda: redis_client.xinfo_groups(streams.TELEMETRY_STREAM)[0]  # noqa: E731
    wait_for(lambda: group()["pending"] == 0 and group()["lag"] == 0)
    logger.send_signal(signal.SIGTERM)
    out, err = logger.communicate(timeout=60)
    assert logger.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["command"] == "ingest" and result["buffered"] == 0 and result["dead_letters"] == 0
    assert "wm ingest: logger-1 logging" in err
    logged = read_transitions(str(tmp_path))
    order = np.lexsort((sent.timestamp, sent.t, sent.eps_id.astype(str), sent.agent_id.astype(str)))
    assert_same(logged, sent.select(order))  # 0 lost, 0 duplicated, counted against what was sent


def test_an_unreachable_redis_is_one_line_without_its_password(capsys, tmp_path: Path) -> None:
    code, result, err = run_json(capsys, "ingest", "--redis", "redis://:s3cret@127.0.0.1:1/0", "--log-dir",
                                 str(tmp_path))
    assert code == 1 and "cannot start ingest from Redis at redis://:***@127.0.0.1:1/0" in result["error"]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "s3cret" not in err + result["error"]


def test_the_prefix_names_every_stream_and_group_of_another_apps_bus() -> None:
    from cluster.cli import build_parser
    from cluster.commands.ingest import ingest_config

    def config(*options: str):
        return ingest_config(build_parser(["ingest"]).parse_args(["ingest", "--redis", "redis://h:1/0",
                                                                  "--log-dir", "x", *options]))

    assert (config().stream, config().group, config().dead_letters) == (
        streams.BUS.telemetry, streams.BUS.ingest_group, streams.BUS.telemetry_dead_letters)
    other = streams.BusNames("fleet-b")
    assert (config("--prefix", "fleet-b").stream, config("--prefix", "fleet-b").group,
            config("--prefix", "fleet-b").dead_letters) == (other.telemetry, other.ingest_group,
                                                            other.telemetry_dead_letters)
    assert config("--prefix", "fleet-b", "--stream", "s").stream == "s"


def test_help_loads_neither_torch_nor_ray_nor_redis() -> None:
    probe = _PROBE.replace('("torch", "ray")', '("torch", "ray", "redis")')
    proc = subprocess.run([sys.executable, "-c", probe, "ingest", "--help"], capture_output=True, text=True,
                          timeout=60)
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result["heavy"] == [] and result["code"] == 0, proc.stderr
    assert "--log-dir" in proc.stdout
