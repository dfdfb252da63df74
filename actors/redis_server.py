"""A redis-server owned by a command (or a test): its own free port and data directory, AOF on, stopped with it.

Durability: ``appendonly yes`` with ``appendfsync everysec`` (the default here). Redis writes each command
to the AOF before it replies, so a crash of the redis-server process (SIGKILL, OOM kill) loses nothing
that was acknowledged to a client; the data is in the OS page cache. A crash of the machine (power, kernel)
loses what the last second's fsync had not reached, at most about two seconds of writes. ``always`` loses
nothing even then, at the price of an fsync per write (several times slower under load); choose it with
``appendfsync="always"`` where a machine crash must lose nothing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

APPENDFSYNC = ("everysec", "always")
INSTALL_HINT = ("redis-server was not found on PATH; install it with `make setup` (Debian/Ubuntu, as root: "
                "apt-get install -y redis-server; macOS: brew install redis) or pass an existing server's URL")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server subprocess on 127.0.0.1; use as a context manager, or ``start()`` / ``stop()``.

    ``kill()`` then ``start()`` restarts it on the same port and data directory, so the AOF is replayed.
    """

    def __init__(self, data_dir: str | Path, port: int | None = None, appendfsync: str = "everysec",
                 start_timeout_s: float = 10.0) -> None:
        if appendfsync not in APPENDFSYNC:
            raise ValueError(f"appendfsync {appendfsync!r} is not one of {', '.join(APPENDFSYNC)}")
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        """Start the server and wait until it answers PING (replaying its AOF first, after a restart).

        Raises:
            FileNotFoundError: redis-server is not installed (the message says how to install it).
            RuntimeError: it exited or did not answer within ``start_timeout_s``, with its log's last lines.
        """
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError(INSTALL_HINT)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "redis.log"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "", "--daemonize", "no",
                "--logfile", str(log), "--maxmemory-policy", "noeviction"]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if self._ping():
                return self
            time.sleep(0.02)
        tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
        self.kill()
        raise RuntimeError(f"redis-server on port {self.port} did not start: {' | '.join(tail) or 'no log'}")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop gracefully (SIGTERM: redis flushes the AOF and exits); kill it if it has not within ``timeout_s``."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: only what the AOF holds survives."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
