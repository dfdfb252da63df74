"""Tiny Warehouse-v1 models for the tests that plan floors: import ``warehouse_models`` into a module.

One `wm collect` of 4 robots and one `wm train` per model kind, through the commands a user types: seconds.
"""

from __future__ import annotations

import pytest

from cluster.cli import main

TINY = ["--epochs", "2", "--hidden", "16", "--ensemble-size", "2"]
"""`wm train` flags of a model trained in a second or two."""


@pytest.fixture(scope="module")
def warehouse_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Model directories: 'fleet' (the env's default, multi-agent) and 'agent' (a per-agent ensemble)."""
    root = tmp_path_factory.mktemp("warehouse")
    logs = str(root / "logs")
    assert main(["collect", "--env", "Warehouse-v1", "--robots", "4", "--episodes", "3", "--steps", "40",
                 "--out", logs, "--json"]) == 0
    out = {"fleet": str(root / "fleet"), "agent": str(root / "agent")}
    assert main(["train", "--data", logs, "--out", out["fleet"], *TINY, "--json"]) == 0
    assert main(["train", "--data", logs, "--out", out["agent"], "--dynamics", "ensemble", *TINY, "--json"]) == 0
    return out
