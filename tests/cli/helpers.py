"""Running `wm` in process as a script would: exactly one JSON object on stdout."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cluster.cli import main


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    """Run `wm ARGS --json`; returns (exit code, the JSON object, stderr).

    Only what the command itself prints counts: output captured before it (a test's setup, or a line
    Ray's driver printed while no command ran) is read and dropped first.
    """
    capsys.readouterr()
    code = main([*args, "--json"])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one JSON line on stdout, got {out!r}"
    return code, json.loads(lines[0]), err
