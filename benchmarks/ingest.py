"""Telemetry ingest: Nav2D transitions per second from the telemetry stream into Parquet, on one core.

Target (issue 14): >= 50,000 transitions/s. The stream is filled first (100 agents, Nav2D's S = 6, A = 2);
then one ``IngestConsumer`` (the code ``wm ingest`` runs), pinned to one core, reads, decodes, writes the
files the learners read (one per flush, fsynced and renamed) and acknowledges, with ``IngestConfig``'s
defaults. Timed from the first read until every entry is acknowledged. redis-server, a process of its own, is
pinned to another core where the machine has one. The logs are read back and checked: every row once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import record

S, A, AGENTS = 6, 2, 100


def fill(client: Any, transitions: int, chunk: int = 10_000) -> None:
    """Add ``transitions`` Nav2D-sized rows from AGENTS agents to the telemetry stream."""
    from actors import streams
    from worldmodel.data import Transitions

    rng = np.random.default_rng(0)
    for start in range(0, transitions, chunk):
        index = np.arange(start, min(start + chunk, transitions))
        b = len(index)
        batch = Transitions.build(obs=rng.normal(size=(b, S)), actions=rng.normal(size=(b, A)),
                                  rewards=rng.normal(size=b), new_obs=rng.normal(size=(b, S)),
                                  terminateds=np.zeros(b, bool), truncateds=np.zeros(b, bool),
                                  eps_id=[f"eps-{i % AGENTS}" for i in index],
                                  agent_id=[f"agent-{i % AGENTS:04d}" for i in index], t=index // AGENTS,
                                  model_version="v1")
        streams.append_transitions(client, batch)


def run(transitions: int) -> dict[str, Any]:
    import redis

    from actors.ingest import IngestConfig, IngestConsumer
    from actors.redis_server import RedisServer
    from worldmodel.data import list_log_files, read_transitions

    cores = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp, "redis")) as server:
        if len(cores) > 1:
            subprocess.run(["taskset", "-pc", str(cores[-1]), str(server._proc.pid)], check=True,
                           capture_output=True)
        client = redis.Redis.from_url(server.url)
        fill(client, transitions)
        os.sched_setaffinity(0, {cores[0]})
        config = IngestConfig()
        consumer = IngestConsumer(server.url, str(Path(tmp, "logs")), "bench", config, env_id="Nav2D-v0")
        start = time.perf_counter()
        consumer.start()
        while consumer.stats().read < transitions:
            consumer.step()
        consumer.flush()
        seconds = time.perf_counter() - start
        os.sched_setaffinity(0, set(cores))
        stats = consumer.stats()
        pending = client.xpending(config.stream, config.group)["pending"]
        logged = read_transitions(str(Path(tmp, "logs")))
        keys = set(zip(logged.agent_id, logged.eps_id, logged.t.tolist()))
        return {
            "transitions": transitions, "seconds": round(seconds, 3),
            "transitions_per_s": round(transitions / seconds), "target_per_s": 50_000,
            "files": len(list_log_files(str(Path(tmp, "logs")))), "flush_rows": config.flush_rows,
            "read_count": config.read_count, "agents": AGENTS, "obs_dim": S, "act_dim": A,
            "written": stats.written, "logged_rows": len(logged), "unique_keys": len(keys),
            "pending_after": pending, "stream_len_after": client.xlen(config.stream),
            "consumer_core": cores[0], "redis_core": cores[-1] if len(cores) > 1 else cores[0],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=500_000, help="rows in the stream (default: %(default)s)")
    args = parser.parse_args()
    record("ingest", run(args.transitions))


if __name__ == "__main__":
    main()
