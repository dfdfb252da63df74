"""The telemetry logger: typed batches, exactly-once files, unwritable locations, bounded shutdown, restarts.

Plain tests drive the logger on an event loop of their own; the Ray tests host it as the fleet endpoint
does (a named async actor that Ray restarts) and read its logs with Ray Data and RLlib.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import ray

import actors.telemetry_config
from actors.telemetry import FlushResult, LoggerConfig, LoggerStats, TelemetryLogger
from tests.ray_fixtures import ray_local  # noqa: F401
from worldmodel.data import Transitions, read_transitions
from worldmodel.data.schema import COLUMNS

S, A = 6, 2


def steps(*t: int, eps: str = "e-1", agent: str = "a-1") -> Transitions:
    """One agent's steps ``t`` of one episode (rewards -t, to check which rows were written)."""
    b = len(t)
    return Transitions.build(obs=np.zeros((b, S)), actions=np.zeros((b, A)), rewards=-np.array(t, float),
                             new_obs=np.ones((b, S)), terminateds=np.zeros(b, bool), truncateds=np.zeros(b, bool),
                             eps_id=[eps] * b, agent_id=agent, t=np.array(t), model_version="1.0.0")


def break_location(root: Path) -> None:
    """Make ``root`` unwritable: a regular file where the directory was (tests run as root, so chmod would not
    do); its files are kept aside for ``fix_location``."""
    root.rename(root.with_name("aside"))
    root.write_text("a file where the log directory should be")


def fix_location(root: Path) -> None:
    root.unlink()
    root.with_name("aside").rename(root)


def test_batches_are_deduplicated_and_written_whole(tmp_path) -> None:
    async def run() -> LoggerStats:
        logger = TelemetryLogger(str(tmp_path / "logs"), env_id="Nav2D-v0", flush_rows=5, flush_s=60)
        assert await logger.log(steps(0, 1, 1)) == 2  # a repeat inside the batch
        assert await logger.log(steps(1, 2)) == 1
        assert await logger.log(steps(1, 2, eps="e-1", agent="a-2")) == 0  # (eps_id, t) seen: same transition
        assert await logger.log(steps(0, 1, 2, eps="e-2", agent="a-2")) == 3  # 6 held: written
        return logger.stats()

    stats = asyncio.run(run())
    assert (stats.written, stats.buffered, stats.duplicates, stats.files, stats.dropped) == (6, 0, 4, 2, 0)
    assert stats.last_error is None
    data = read_transitions(str(tmp_path / "logs"))
    assert sorted(zip(data.eps_id.tolist(), data.t.tolist())) == [("e-1", 0), ("e-1", 1), ("e-1", 2),
                                                                 ("e-2", 0), ("e-2", 1), ("e-2", 2)]
    with pytest.raises(TypeError, match="log takes worldmodel.data.Transitions, got list"):
        asyncio.run(TelemetryLogger(str(tmp_path / "other")).log([{"obs": [0.0]}]))


def test_settings_and_stats_live_apart_from_the_logger_without_ray() -> None:
    config = actors.telemetry_config
    assert (LoggerConfig, LoggerStats, FlushResult) == (config.LoggerConfig, config.LoggerStats, config.FlushResult)
    with pytest.raises(ValueError, match="LoggerConfig.flush_rows must be >= 1, got 0"):
        LoggerConfig(flush_rows=0)
    probe = "import sys, actors.telemetry_config; print('ray' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parents[2])
    assert loaded.stdout.strip() == "False"


def test_an_unwritable_location_fails_the_start(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    target = str(tmp_path / "file" / "logs")
    with pytest.raises(PermissionError, match=f"cannot write logs under '{target}'"):
        TelemetryLogger(target)


def test_failing_writes_keep_accepting_bound_the_buffer_back_off_and_recover(tmp_path) -> None:
    root = tmp_path / "logs"
    logger = TelemetryLogger(str(root), flush_rows=10, flush_s=60, max_buffer_rows=30, retry_s=60, max_retry_s=60)
    attempts = []
    write = logger._write
    logger._write = lambda *a: (attempts.append(1), write(*a))[1]  # count write attempts

    async def run() -> None:
        await logger.log(steps(*range(0, 10)))
        assert logger.stats().written == 10
        break_location(root)
        for start in range(10, 60, 10):  # 50 rows while writes fail
            assert await logger.log(steps(*range(start, start + 10))) == 10  # accepted, never raised
        stats = logger.stats()
        assert len(attempts) == 2  # one failed attempt, then backing off (retry_s=60): not one per call
        assert "Not a directory" in stats.last_error and stats.failing_since <= time.time()
        assert stats.retry_in_s > 30 and (stats.buffered, stats.dropped) == (30, 20)  # bounded: oldest dropped
        began = time.monotonic()
        shutdown = await logger.flush(timeout_s=5)  # what `wm serve` does at shutdown
        assert time.monotonic() - began < 5
        assert (shutdown.written, shutdown.unwritten) == (0, 30) and "Not a directory" in shutdown.error
        fix_location(root)
        fixed = await logger.flush(timeout_s=5)
        assert (fixed.written, fixed.unwritten, fixed.error) == (30, 0, None)

    asyncio.run(run())
    stats = logger.stats()
    assert (stats.written, stats.buffered, stats.dropped, stats.last_error, stats.failing_since) == (40, 0, 20, None,
                                                                                                    None)
    assert sorted(read_transitions(str(root)).t.tolist()) == [*range(10), *range(30, 60)]  # the newest 30 kept


def test_the_periodic_write_retries_until_the_location_is_fixed(tmp_path) -> None:
    root = tmp_path / "logs"
    logger = TelemetryLogger(str(root), flush_rows=1000, flush_s=0.05, retry_s=0.02, max_retry_s=0.1)

    async def run() -> None:
        break_location(root)
        await logger.log(steps(0, 1, 2))
        await asyncio.sleep(0.5)  # several periodic attempts fail
        assert logger.stats().last_error is not None and logger.stats().buffered == 3
        fix_location(root)
        for _ in range(100):
            if logger.stats().written == 3:
                break
            await asyncio.sleep(0.05)
        assert logger._ticker is not None and not logger._ticker.done()  # it outlived the failures

    asyncio.run(run())
    assert logger.stats().written == 3 and logger.stats().last_error is None


def test_flush_is_bounded_when_a_write_hangs(tmp_path) -> None:
    logger = TelemetryLogger(str(tmp_path / "logs"), flush_rows=1000)
    release = threading.Event()
    write_file = logger.writer.write_file
    logger.writer.write_file = lambda planned: (release.wait(10), write_file(planned))[1]  # a hung filesystem

    async def run() -> None:
        await logger.log(steps(0, 1))
        began = time.monotonic()
        result = await logger.flush(timeout_s=0.3)
        assert time.monotonic() - began < 2 and (result.written, result.unwritten) == (0, 2)
        release.set()
        assert (await logger.flush(timeout_s=10)).written == 2  # the write in flight ends

    asyncio.run(run())


def test_a_partly_failed_write_keeps_only_the_unwritten_rows(tmp_path) -> None:
    logger = TelemetryLogger(str(tmp_path / "logs"), flush_rows=1000, retry_s=0.01, max_retry_s=0.01)
    write_file, calls = logger.writer.write_file, []

    def second_fails(planned):
        calls.append(planned.path)
        if len(calls) == 2:
            raise OSError("disk full")
        return write_file(planned)

    logger.writer.write_file = second_fails

    async def run() -> None:
        await logger.log(Transitions.concat([steps(0, 1, agent="a-1"), steps(0, 1, 2, eps="e-2", agent="a-2")]))
        first = await logger.flush()
        assert first.error == "disk full" and first.written + first.unwritten == 5
        assert (await logger.flush()).unwritten == 0

    asyncio.run(run())
    data = read_transitions(str(tmp_path / "logs"))
    assert len(data) == 5 and len(set(zip(data.eps_id.tolist(), data.t.tolist()))) == 5  # each once
    assert logger.stats().files == 2


def test_totals_survive_a_restart_and_count_the_files_of_the_last_write(tmp_path) -> None:
    root = str(tmp_path / "logs")

    async def run(logger: TelemetryLogger, batch: Transitions) -> None:
        await logger.log(batch)
        await logger.flush()

    first = TelemetryLogger(root, run_id="run-1")
    asyncio.run(run(first, steps(0, 1, 2)))
    # The same run restarted: its totals go on from the ledger, the last write's file included.
    again = TelemetryLogger(root, run_id="run-1")
    assert (again.stats().written, again.stats().files) == (3, 1)
    again.writer.write_file = lambda planned: (_ for _ in ()).throw(OSError("crashed before publishing"))
    asyncio.run(run(again, steps(3, 4)))  # its ledger names a file that never appeared
    third = TelemetryLogger(root, run_id="run-1")
    assert (third.stats().written, third.stats().files) == (3, 1)
    assert TelemetryLogger(root, run_id="run-2").stats().written == 0  # another run counts its own
    (tmp_path / "logs" / "_runs" / "run-1.json").write_text("garbage")
    assert TelemetryLogger(root, run_id="run-1").stats().written == 0  # a malformed ledger: counted afresh
    assert len(read_transitions(root)) == 3  # the ledgers are not logs


def test_a_restarted_logger_actor_keeps_its_totals_and_restarts_degraded(ray_local, tmp_path) -> None:  # noqa: F811
    root = tmp_path / "logs"
    logger = ray.remote(TelemetryLogger).options(num_cpus=0, max_restarts=-1, max_task_retries=-1).remote(str(root))
    assert ray.get(logger.log.remote(steps(0, 1, 2))) == 3
    assert ray.get(logger.flush.remote(timeout_s=30)).written == 3
    run_id = ray.get(logger.stats.remote()).run_id
    _restart(logger)  # as Ray restarts a crashed logger
    assert ray.get(logger.log.remote(steps(3, 4))) == 2
    ray.get(logger.flush.remote(timeout_s=30))
    stats = ray.get(logger.stats.remote())
    assert (stats.run_id, stats.written, stats.files) == (run_id, 5, 2)

    break_location(root)
    _restart(logger)  # the location's probe fails, but a restarted logger must take rows all the same
    assert ray.get(logger.log.remote(steps(5, 6))) == 2
    assert "cannot write logs under" in ray.get(logger.stats.remote()).last_error
    fix_location(root)
    assert ray.get(logger.flush.remote(timeout_s=30)).unwritten == 0
    stats = ray.get(logger.stats.remote())
    assert (stats.written, stats.files, stats.last_error) == (7, 3, None)  # the ledger was read once writable
    ray.kill(logger, no_restart=True)
    assert len(read_transitions(str(root))) == 7


def _restart(actor: ray.actor.ActorHandle) -> None:
    """Kill ``actor`` and wait until Ray has restarted it (a call may still reach the old process)."""
    pid = _pid(actor)
    ray.kill(actor, no_restart=False)
    deadline = time.monotonic() + 60
    while _pid(actor) == pid and time.monotonic() < deadline:
        time.sleep(0.1)


def _pid(actor: ray.actor.ActorHandle) -> int:
    return ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))


@pytest.mark.slow
def test_ray_data_and_rllib_bc_read_the_logs_as_written(ray_local, tmp_path) -> None:  # noqa: F811
    from ray.rllib.algorithms.bc import BCConfig

    root = _served_logs(tmp_path, episodes=5)
    rows = ray.data.read_parquet(root).take_all()  # the run ledger beside the logs is not read
    assert len(rows) == 100 and isinstance(rows[0]["timestamp"], (int, np.integer))
    assert sorted(rows[0]) == sorted(COLUMNS)
    # RLlib's offline pipeline turns every column it does not know into a tensor: no column selection here.
    config = (BCConfig()
              .environment(observation_space=gym.spaces.Box(-np.inf, np.inf, (S,), np.float32),
                           action_space=gym.spaces.Box(-1.0, 1.0, (A,), np.float32))
              .offline_data(input_=[root], dataset_num_iters_per_learner=1,
                            map_batches_kwargs={"concurrency": 1, "num_cpus": 0})
              .training(train_batch_size_per_learner=32))
    algo = config.build_algo()
    try:
        result = algo.train()
    finally:
        algo.stop()
    assert result["training_iteration"] == 1 and result["learners"]


def _served_logs(tmp_path: Path, episodes: int) -> str:
    """Logs of ``episodes`` 20-step episodes as the served path writes them (the logger, its ledger included)."""
    root = str(tmp_path / "served")
    rng = np.random.default_rng(0)
    batches = []
    for e in range(episodes):
        part = steps(*range(20), eps=f"e-{e}", agent=f"a-{e % 2}")
        batches.append(Transitions.build(
            obs=rng.normal(size=(20, S)), actions=rng.uniform(-1, 1, (20, A)), rewards=part.rewards,
            new_obs=rng.normal(size=(20, S)), terminateds=np.arange(20) == 19, truncateds=part.truncateds,
            eps_id=part.eps_id, agent_id=part.agent_id, t=part.t, model_version=part.model_version))

    async def run() -> None:
        logger = TelemetryLogger(root, env_id="Nav2D-v0", flush_rows=10_000)
        await logger.log(Transitions.concat(batches))
        assert (await logger.flush()).written == 20 * episodes

    asyncio.run(run())
    return root
