"""Import ``one_thread`` into a test module: all its tests run on one torch thread."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small batched ops: on the shared 2-core machine a second torch thread only waits for the first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
