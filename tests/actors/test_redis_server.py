"""The redis-server a command or a test owns: it starts and stops, keeps acknowledged writes across a crash
(AOF), refuses a taken port, says how to install itself, and never outlives or precedes its owner's stop."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from actors.redis_server import INSTALL_HINT, RedisServer, check_reachable, shown_url
from tests.redis_fixtures import redis_server  # noqa: F401 (fixture)

needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason=INSTALL_HINT)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


@needs_redis
def test_starts_answers_and_stops_leaving_an_aof(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    pid = server.pid
    assert pid is not None and redis.Redis.from_url(server.url).ping()
    server.stop()
    assert server.pid is None and _wait_gone(pid)
    assert list((tmp_path / "appendonlydir").glob("*.aof"))
    with pytest.raises(ValueError, match="no Redis answers at"):
        check_reachable(server.url, timeout_s=1.0)


@needs_redis
def test_a_crash_then_a_restart_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    try:
        client = redis.Redis.from_url(server.url)
        ids = [client.xadd("s", {"i": i}) for i in range(500)]  # each acknowledged
        client.close()
        server.kill()  # SIGKILL: only the AOF survives
        server.start()
        client = redis.Redis.from_url(server.url)
        assert [entry_id for entry_id, _ in client.xrange("s")] == ids
        client.close()
    finally:
        server.stop()


@needs_redis
def test_a_taken_port_is_a_clear_error_even_when_a_redis_answers_there(redis_server: RedisServer,
                                                                       tmp_path: Path) -> None:
    # Another redis-server on the port would answer PING: it must not pass for the one started here.
    with pytest.raises(ValueError, match=f"port {redis_server.port} on 127.0.0.1 is in use"):
        RedisServer(tmp_path, port=redis_server.port).start()


@needs_redis
def test_one_server_at_a_time_writes_a_data_directory(tmp_path: Path) -> None:
    with RedisServer(tmp_path):
        with pytest.raises(ValueError, match=f"another redis-server runs on {tmp_path}"):
            RedisServer(tmp_path).start()
    with RedisServer(tmp_path) as again:  # the lock went with the server that held it
        assert redis.Redis.from_url(again.url).ping()


def test_a_missing_binary_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        RedisServer(tmp_path / "data").start()
    assert str(err.value) == INSTALL_HINT and "make setup" in INSTALL_HINT and "apt-get install" in INSTALL_HINT


@needs_redis
def test_a_ctrl_c_in_the_owners_terminal_does_not_reach_it(tmp_path: Path) -> None:
    # The terminal signals the foreground process group; the owner must flush through Redis before it stops.
    with RedisServer(tmp_path) as server:
        assert os.getpgid(server.pid) != os.getpgid(0)


@needs_redis
def test_an_owner_killed_outright_leaves_no_server_behind(tmp_path: Path) -> None:
    code = (f"from actors.redis_server import RedisServer; import time; s = RedisServer({str(tmp_path)!r}).start(); "
            "print(s.pid, flush=True); time.sleep(120)")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid = int(owner.stdout.readline())
    try:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert _wait_gone(pid), f"redis-server {pid} outlived its owner"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_urls_are_shown_without_their_password_and_checked_in_one_line() -> None:
    assert shown_url("redis://:s3cret@head:6380/0") == "redis://:***@head:6380/0"
    assert shown_url("redis://127.0.0.1:6380/0") == "redis://127.0.0.1:6380/0"
    with pytest.raises(ValueError, match="is not a Redis URL") as bad:
        check_reachable("http://:s3cret@head:6380")
    with pytest.raises(ValueError, match=r"no Redis answers at redis://:\*\*\*@127.0.0.1:1/0") as unreachable:
        check_reachable("redis://:s3cret@127.0.0.1:1/0", timeout_s=1.0)
    for err in (bad, unreachable):
        assert "s3cret" not in str(err.value) and len(str(err.value).splitlines()) == 1
