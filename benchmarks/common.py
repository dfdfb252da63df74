"""Helpers shared by the benchmarks: run `wm` as a user would, and record results as JSON."""

from __future__ import annotations

import contextlib
import importlib.metadata
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


def _cpu_model() -> str:
    """The CPU's model name as the kernel reports it (Linux), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    """An installed package's version without importing it (Ray's import alone takes seconds)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    proc = subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent)
    return proc.stdout.strip() if proc.returncode == 0 else None


def machine() -> dict[str, Any]:
    """Facts about where and on what code a result was measured; ``docs.py`` prints them on each page.

    ``cores`` counts the machine's logical CPUs, ``cpus`` torch's default thread count; ``git_dirty``
    says whether tracked files differed from ``git_commit``.
    """
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"python": platform.python_version(), "torch": torch.__version__, "ray": _version("ray"),
            "cpu_model": _cpu_model(), "cores": os.cpu_count(), "cpus": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "processor": platform.processor() or platform.machine(),
            "git_commit": _git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status)}


def record(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """Stamp, save to benchmarks/results/NAME.json and print the one JSON object."""
    result = {"benchmark": name, "date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": machine()} | result
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result
