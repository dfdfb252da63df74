"""One Ray instance per test module: import ``ray_local`` into a module (or its conftest) to use it.

``RAY_AUTH_MODE`` is set explicitly (disabled) so a token left in the environment or in
``~/.ray`` by another run cannot change how the test cluster behaves, and every port Ray
and Serve open is chosen free.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest
import ray

from cluster.runtime import RayInfo, init_ray


@pytest.fixture(scope="module")
def ray_local() -> Iterator[RayInfo]:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    if ray.is_initialized():
        ray.shutdown()
    info = init_ray(num_cpus=4, num_gpus=0, object_store_mb=256)
    yield info
    ray.shutdown()
