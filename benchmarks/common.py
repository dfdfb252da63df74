"""Helpers shared by the benchmarks: run `wm` as a user would, and record results as JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def wm(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `wm ARGS --json` in a subprocess (with ``env`` added to this environment) and return its JSON
    object; raise with its stderr on failure."""
    proc = subprocess.run([sys.executable, "-m", "cluster", *args, "--json"], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"wm {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "processor": platform.processor() or platform.machine()}


def record(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """Stamp, save to benchmarks/results/NAME.json and print the one JSON object."""
    result = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": machine()} | result
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result
