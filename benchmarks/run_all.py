"""`make bench`: run every benchmark; each prints one JSON object and saves it under benchmarks/results/."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    "benchmarks.model_fit",
    "benchmarks.nav2d_closed_loop",
    "benchmarks.plan_throughput",
    "benchmarks.pendulum_mbrl",
    "benchmarks.serve_fleet",
]


def main() -> None:
    for name in BENCHMARKS:
        print(f"== {name}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", name], check=True)


if __name__ == "__main__":
    main()
