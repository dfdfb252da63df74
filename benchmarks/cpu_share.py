"""Where a machine's CPU goes during a run: each process's share of one core, from /proc (Linux), grouped by
role (a Ray actor's class, a Serve replica's deployment, redis-server, the driver itself).

``CpuShare`` samples on a thread: ``start()`` takes the first reading after ``delay_s``, ``result()`` the
second one ``seconds`` later (or at once, when the run ended first) and returns the shares, largest first.
Elsewhere than Linux it returns nothing.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

_SERVE = re.compile(r"ServeReplica:[^:]+:(\w+)")


def _role(cmdline: str, pid: int) -> str:
    if pid == os.getpid():
        return "fleet driver (the benchmark's agents and client)"
    if match := _SERVE.search(cmdline):
        return f"Serve replica: {match.group(1)}"
    if cmdline.startswith("ray::"):
        return f"Ray actor: {cmdline[5:].split()[0].split('.')[0]}"
    if "redis-server" in cmdline:
        return "redis-server"
    if "-m cluster serve" in cmdline:
        return "wm serve (driver)"
    return "Ray and system processes"


def _readings() -> dict[int, tuple[str, int]]:
    """pid -> (role, CPU ticks so far)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_text().replace("\0", " ").strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(entry.name)] = (_role(cmdline or stat.split("(")[1].split(")")[0], int(entry.name)),
                                int(fields[11]) + int(fields[12]))
    return out


class CpuShare:
    """Per-role CPU shares (% of one core) between two readings of /proc."""

    def __init__(self, delay_s: float, seconds: float) -> None:
        self.delay_s, self.seconds = delay_s, seconds
        self._first: tuple[float, dict[int, tuple[str, int]]] | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cpu-share")

    def start(self) -> "CpuShare":
        if Path("/proc/self/stat").exists():
            self._thread.start()
        return self

    def _run(self) -> None:
        if self._done.wait(self.delay_s):
            return
        self._first = (time.monotonic(), _readings())
        self._done.wait(self.seconds)

    def result(self) -> dict[str, float]:
        """Role -> % of one core over the sampled interval (empty when nothing was sampled)."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._first is None:
            return {}
        start, first = self._first
        elapsed, last = time.monotonic() - start, _readings()
        ticks = os.sysconf("SC_CLK_TCK")
        shares: dict[str, float] = {}
        for pid, (role, now) in last.items():
            if pid in first:
                shares[role] = shares.get(role, 0.0) + (now - first[pid][1]) / ticks / elapsed * 100
        return {role: round(pct, 1) for role, pct in sorted(shares.items(), key=lambda kv: -kv[1]) if pct >= 0.5}
