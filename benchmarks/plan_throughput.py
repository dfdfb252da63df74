"""Planning throughput: `wm bench plan` for CEM, MPPI and gradient MPC at 1 to 256 agents per call.

Each run reports plans/s (and per core), latency p50/p99, achieved GFLOP/s as a
fraction of the matmul peak measured in the same run (for the whole plan, and for
the batched rollouts alone: their FLOPs over the time spent in them), and the
speedup over the original article's planner (gradient MPC through one 64x2 MLP, one
agent per call, one core) measured in the same run. The served setting also runs
without fleetwm's native kernel (torch's path, FLEETWM_NATIVE=0). The deadline run
gives CEM a 20 ms budget with settings that would take far longer unbudgeted, and
reports p99 latency and how often the fallback acted.

Runs use one CPU thread by default: per-core numbers are then measured, not
divided, and compare directly with the one-core reference; on a shared machine
a multi-threaded run mostly measures its neighbours (OpenMP threads that wait
on a descheduled sibling). ``--threads 0`` keeps torch's own choice.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.common import record, wm
from benchmarks.nav2d_closed_loop import WHITE

AGENTS = "1,16,64,256"
# PETS' CEM with 3 rounds (white noise) on the default model (5 x 64x2, the Nav2D closed loop's).
NAV2D = ["--horizon", "20", "--samples", "32", "--iterations", "3"]
# The served setting, `wm bench plan`'s defaults (planners.config.PlanConfig, CEM's iCEM noise): one
# warm-started CEM round per step, horizon 30, iCEM's coloured noise.
NAV2D_SERVED: list[str] = []
RUNS = {
    "cem": ["--planner", "cem", "--agents", AGENTS, *NAV2D, *WHITE],
    "cem_1_iteration": ["--planner", "cem", "--agents", AGENTS, *NAV2D_SERVED],
    # The same without fleetwm's native kernel: torch's path, as on a machine without a compiler.
    "cem_1_iteration_torch": ["--planner", "cem", "--agents", AGENTS, *NAV2D_SERVED],
    "mppi": ["--planner", "mppi", "--agents", AGENTS, *NAV2D],
    "gradient": ["--planner", "gradient", "--agents", "1,16,64", *NAV2D],
    "cem_deadline_20ms": ["--planner", "cem", "--agents", AGENTS, "--budget-ms", "20", "--horizon", "20",
                          "--samples", "256", "--iterations", "10", *WHITE],
}
ROW_KEYS = ("agents", "plans_per_s", "plans_per_s_per_core", "ms_p50", "ms_p99", "gflops", "fraction_of_peak",
            "rollout_ms", "rollout_gflops", "rollout_fraction_of_peak", "speedup_vs_reference", "iterations_mean",
            "fallback_fraction")
TORCH_ONLY = {"FLEETWM_NATIVE": "0"}


def run(repeats: int, deadline_repeats: int, threads: int) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    thread_flags = ["--threads", str(threads)] if threads else []
    for name, flags in RUNS.items():
        n = deadline_repeats if "--budget-ms" in flags else repeats
        out = wm("bench", "plan", *flags, "--repeats", str(n), *thread_flags,
                 env=TORCH_ONLY if name.endswith("_torch") else None)
        runs[name] = {"planner": out["planner"], "settings": out["settings"], "device": out["device"],
                      "threads": out["threads"], "native": out["native"], "peak_gflops": out["peak_gflops"],
                      "reference": out["reference"],
                      "rows": [{k: row[k] for k in ROW_KEYS if k in row} for row in out["rows"]]}
    deadline = runs["cem_deadline_20ms"]["rows"]
    return {"repeats": repeats, "threads": threads or "torch default", "runs": runs,
            "deadline_met": {str(r["agents"]): r["ms_p99"] <= 25.0 for r in deadline}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per agent count")
    parser.add_argument("--deadline-repeats", type=int, default=20, help="timed calls per agent count, deadline run")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 keeps torch's choice")
    args = parser.parse_args()
    record("plan_throughput", run(args.repeats, args.deadline_repeats, args.threads))


if __name__ == "__main__":
    main()
