"""`wm bench plan`: planning throughput for N agents per call, against the matmul peak and the article.

Each row times ``planner.plan(obs)`` for N agents at once and reports plans/s
(N over the mean seconds per call), latency percentiles, the FLOPs one call
costs (counted from layer sizes) and the fraction of the matmul peak measured
in the same run on the same device. The measuring is in ``bench_plan.py``; this
module holds the options, whose planner defaults are ``PlanConfig``'s and whose
model defaults are ``ModelConfig``'s.
The reference is the original article's planner: gradient MPC through one
64x2 deterministic MLP, one agent per call, on one CPU core.
"""

from __future__ import annotations

import argparse
from typing import Any

from cluster.commands.plan import add_plan_options
from planners.config import PlanConfig
from worldmodel.config import ModelConfig

REFERENCE_CFG = PlanConfig(horizon=15, samples=1, iterations=10, propagation="expectation")
"""The article's planner: 10 Adam steps (lr 0.1, GradientConfig's default) on one 15-step sequence."""


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    bench = sub.add_parser("bench")
    what = bench.add_subparsers(dest="bench", metavar="WHAT", required=True)
    p = what.add_parser("plan", parents=[common], help="plans/s for N agents per call, vs matmul peak and article")
    p.add_argument("--agents", default="1,16,64,256", help="comma-separated agent counts N per call")
    p.add_argument("--model", default=None, metavar="MODEL_DIR",
                   help="trained model (default: an untrained Nav2D-sized ensemble of --ensemble-size x "
                        "--hidden x --layers)")
    model = ModelConfig()
    p.add_argument("--hidden", type=int, default=model.hidden, help="(default: %(default)s)")
    p.add_argument("--layers", type=int, default=model.layers, help="(default: %(default)s)")
    p.add_argument("--ensemble-size", type=int, default=model.ensemble_size, help="(default: %(default)s)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per agent count")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    add_plan_options(p)
    p.set_defaults(handler=_run_bench_plan)


def _run_bench_plan(args: argparse.Namespace) -> dict[str, Any]:
    from cluster.commands.bench_plan import run_bench_plan

    return run_bench_plan(args)


def parse_agents(text: str) -> list[int]:
    """'1,16,64' -> [1, 16, 64]; every entry must be an integer >= 1."""
    counts = []
    for part in text.split(","):
        try:
            n = int(part.strip())
        except ValueError:
            raise ValueError(f"--agents must be comma-separated integers >= 1, got {part.strip()!r} "
                             f"in {text!r}") from None
        if n < 1:
            raise ValueError(f"--agents must be comma-separated integers >= 1, got {n} in {text!r}")
        counts.append(n)
    return counts
