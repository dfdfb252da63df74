"""One real redis-server per test module: import ``redis_server`` (and ``redis_client``) into a test module.

The server runs on a free port with its data (AOF) in the module's temp directory and is stopped at the
module's end. ``make setup`` installs redis-server; without it these tests skip, saying how to install it.
"""

from __future__ import annotations

import os
import shutil
from typing import Iterator

import pytest
import redis

from actors.redis_server import INSTALL_HINT, RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):  # CI runs `make test`, which installs it: a missing server is a failure there
            pytest.fail(f"redis-server is not installed on CI; {INSTALL_HINT}")
        pytest.skip(INSTALL_HINT)
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture()
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on an emptied database (each test starts from no streams)."""
    client = redis.Redis.from_url(redis_server.url, socket_timeout=30)
    client.flushdb()
    yield client
    client.close()
