"""A redis-server owned by a command (or a test): its own free port and data directory, AOF on, stopped with it.

Durability: ``appendonly yes`` with ``appendfsync everysec`` (the default here). Redis writes each command
to the AOF before it replies, so a crash of the redis-server process (SIGKILL, OOM kill) loses nothing
that was acknowledged to a client; the data is in the OS page cache. A crash of the machine (power, kernel)
loses what the last second's fsync had not reached, at most about two seconds of writes. ``always`` loses
nothing even then, at the price of an fsync per write (several times slower under load); choose it with
``appendfsync="always"`` where a machine crash must lose nothing.

Ownership: the server runs in a session of its own, so a Ctrl-C in the owner's terminal (SIGINT to the
whole foreground group) does not stop it before the owner has flushed what it holds; and on Linux it gets
SIGTERM when the thread that started it dies, so an owner killed outright leaves no server behind holding
its data directory (it exits cleanly, AOF flushed). Start it from a thread that lives as long as it should.
One server at a time writes a data directory: the server holds a lock on it (``owner.lock``) for its life,
and a second one is refused instead of interleaving its AOF with the first's.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

from actors.ports import free_port

APPENDFSYNC = ("everysec", "always")
INSTALL_HINT = ("redis-server was not found on PATH; install it with `make setup` (Debian/Ubuntu, as root: "
                "apt-get install -y redis-server; macOS: brew install redis) or pass an existing server's URL")
_PR_SET_PDEATHSIG = 1  # prctl(2)


def shown_url(url: str) -> str:
    """``url`` as it may be printed or recorded: a password in it replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_reachable(url: str, timeout_s: float = 3.0) -> None:
    """Raise a one-line error unless a Redis server answers PING at ``url`` (password included in the URL).

    Raises:
        ValueError: ``url`` is not a Redis URL, or nothing answered (the reason, the URL shown without password).
    """
    import redis  # the client library: loaded only when a URL is checked

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    except ValueError as err:
        raise ValueError(f"{shown_url(url)!r} is not a Redis URL (redis://[:PASSWORD@]HOST:PORT/DB): {err}") from None
    try:
        client.ping()
    except redis.RedisError as err:
        raise ValueError(f"no Redis answers at {shown_url(url)}: {' '.join(str(err).split())}") from None
    finally:
        client.close()


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

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (started here), else None."""
        return None if self._proc is None or self._proc.poll() is not None else self._proc.pid

    def start(self) -> "RedisServer":
        """Start the server and wait until it answers (replaying its AOF first, after a restart).

        Raises:
            FileNotFoundError: redis-server is not installed (the message says how to install it).
            ValueError: ``port`` is taken on 127.0.0.1 (by another redis-server or anything else), or another
                server runs on ``data_dir``.
            RuntimeError: it exited or did not answer within ``start_timeout_s``, with its log's last lines.
        """
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError(INSTALL_HINT)
        _check_port_free(self.port)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "redis.log"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "", "--daemonize", "no",
                "--logfile", str(log), "--maxmemory-policy", "noeviction"]
        lock = _lock_dir(self.data_dir)
        try:  # the server inherits the lock: it holds it as long as it runs, whatever happens to this process
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True, pass_fds=(lock,),
                                          preexec_fn=_die_with_parent())
        finally:
            os.close(lock)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline and self._proc.poll() is None:
            # The pid, not only an answer: a server that took the port after the check answers too.
            if _answering_pid(self.port) == self._proc.pid and _loaded(self.port):
                return self
            time.sleep(0.02)
        tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
        self.kill()
        raise RuntimeError(f"redis-server on port {self.port} did not start: {' | '.join(tail) or 'no log'}")

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


@dataclass(frozen=True)
class BusServer:
    """The Redis a command runs its fleet bus on (``serve_bus``)."""

    url: str
    """Password included: for the app, never printed (``shown()``)."""
    owned: bool
    """Started by the command, and stopped after its app."""
    data_dir: str | None
    """Where an owned server keeps its AOF; None for a given one."""

    def shown(self) -> dict[str, Any]:
        """What a command prints and records about it: the URL without its password."""
        return {"url": shown_url(self.url), "owned": self.owned, "data_dir": self.data_dir}


@contextlib.contextmanager
def serve_bus(url: str | None, data_dir: str | Path, check: bool = True) -> Iterator[BusServer]:
    """The server at ``url`` (checked reachable when ``check``) or, with ``url`` None, a ``RedisServer``
    started in ``data_dir`` and stopped (AOF flushed) when the block ends, however it ends.

    Raises:
        ValueError: ``url`` unreachable, or the server did not start (one line, with its log's last lines).
        FileNotFoundError: redis-server is not installed (``INSTALL_HINT``).
    """
    if url is not None:
        if check:
            check_reachable(url)
        yield BusServer(url, owned=False, data_dir=None)
        return
    server = RedisServer(data_dir)
    try:
        server.start()
    except RuntimeError as err:  # it exited or did not answer: commands report expected errors as ValueError
        raise ValueError(str(err)) from None
    try:
        yield BusServer(server.url, owned=True, data_dir=str(data_dir))
    finally:
        server.stop()


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: connections of a server that just stopped (TIME_WAIT) do not count as in use.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            raise ValueError(f"port {port} on 127.0.0.1 is in use: a redis-server needs a free one "
                             "(leave the port unset to get one)") from None


def _lock_dir(data_dir: Path) -> int:
    """An open descriptor holding an exclusive lock on ``data_dir`` (released when every copy is closed)."""
    fd = os.open(data_dir / "owner.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(f"another redis-server runs on {data_dir}: one server at a time writes its AOF") from None
    return fd


def _answering_pid(port: int) -> int | None:
    """The process id of the Redis server answering on ``port`` (``INFO server``), None if none answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"INFO server\r\n")
            reply = b""
            while (found := re.search(rb"process_id:(\d+)\r\n", reply)) is None:
                chunk = s.recv(4096)
                reply += chunk
                if not chunk or reply.startswith(b"-"):  # closed, or an error (a server with a password)
                    return None
    except OSError:
        return None
    return int(found.group(1))


def _loaded(port: int) -> bool:
    """Whether the server on ``port`` serves commands: it answers INFO while replaying its AOF, PING only after."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when the thread that started it dies."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
