"""`make bench`: run every benchmark, each saving its JSON under benchmarks/results/, then render docs/.

`--only NAME,...` runs some of them (the docs are rendered in any case).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

BENCHMARKS = ["model_fit", "nav2d_closed_loop", "defaults_nav2d", "plan_throughput", "pendulum_mbrl", "serve_fleet",
              "ingest", "fleet_bus", "safety", "warehouse", "export",
              "uncertainty", "perception"]
"""Modules of ``benchmarks/``, in the order `make bench` runs them."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated names from: " + ", ".join(BENCHMARKS))
    args = parser.parse_args(argv)
    chosen = BENCHMARKS if args.only is None else args.only.split(",")
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    for name in chosen:
        print(f"== {name}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=True)
    subprocess.run([sys.executable, "-m", "benchmarks.docs"], check=True)


if __name__ == "__main__":
    main()
