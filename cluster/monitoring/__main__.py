"""``python -m cluster.monitoring [--out DIR]``: write the alert rules, the Prometheus configuration and the
Grafana dashboard rendered from ``rules.Thresholds()`` (by default into this package's directory)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.monitoring.dashboard import render_dashboard
from cluster.monitoring.prometheus import DEFAULT_CONFIG, prometheus_config
from cluster.monitoring.rules import Thresholds, render_rules

HERE = Path(__file__).parent
FILES = ("alerts.yml", "prometheus.yml", "grafana/fleetwm.json")
"""What is written, relative to the output directory."""


def rendered(thresholds: Thresholds) -> dict[str, str]:
    """Each of ``FILES`` and its text."""
    return dict(zip(FILES, (render_rules(thresholds), prometheus_config(DEFAULT_CONFIG),
                            render_dashboard(thresholds))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.monitoring", description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE, help="directory to write into (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        for name, text in rendered(Thresholds()).items():
            path = args.out / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(path)
    except OSError as err:
        print(f"error: cannot write into {args.out}: {err.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
