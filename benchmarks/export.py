"""Edge export: `wm export` of the README's Nav2D model, and the edge planner on it against fleetwm's planners.

`wm collect` 100 random Nav2D episodes and `wm train` the default model (5 x 64x2 ensemble, 64x2 reward),
as ``benchmarks/nav2d_closed_loop.py`` does; `wm export` it as ONNX and as TorchScript (each graph checked
against torch on random inputs). Then, in the same run and on one CPU thread each, one planning call for
N = 1 and 100 agents with the served settings (``PlanConfig``, CEM's defaults, the learned reward, no
warm start, random states as `wm bench plan` draws them):

- the edge planner (``planners.edge``: numpy + onnxruntime, one intra-op thread);
- the native kernel planner: `wm bench plan --model` (torch CEM, MLPs in fleetwm's fused kernel);
- the torch planner: the same with ``FLEETWM_NATIVE=0``.

`wm bench plan`'s time includes the audit of the chosen plans (H steps of every member), which the edge
planner does not run; the rollout time (the candidates' simulation alone) compares like for like.

Last, a closed loop: 100 Nav2D episodes with 2 no-fly zones planned by the edge planner (learned reward plus
the zones' costs, no shield), with `wm eval` of the torch planner on the same model, seed and settings,
without and with its shield, for reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import record, wm

AGENTS = (1, 100)
LOOP_KEYS = ("episodes", "success_rate", "violations", "episodes_with_violation", "plan_ms_mean", "plan_ms_p99")
TORCH_ONLY = {"FLEETWM_NATIVE": "0"}


def _model(tmp: Path, seed: int) -> tuple[str, dict[str, Any]]:
    """The README's Nav2D model, trained here: its directory and `wm train`'s answer."""
    logs = str(tmp / "logs")
    wm("collect", "--env", "Nav2D-v0", "--episodes", "100", "--out", logs, "--seed", str(seed))
    trained = wm("train", "--data", logs, "--out", str(tmp / "model"), "--quiet")
    return trained["model_dir"], trained


def _exports(model_dir: str, tmp: Path) -> dict[str, Any]:
    """`wm export` in both formats: seconds, and each graph's max abs difference from torch."""
    out = {}
    for fmt in ("onnx", "torchscript"):
        start = time.perf_counter()
        answer = wm("export", model_dir, "--format", fmt, "--out", str(tmp / fmt))
        out[fmt] = {"seconds": time.perf_counter() - start, "dir": answer["out"], "tolerance": answer["tolerance"],
                    "max_abs_diff": {k: g["max_abs_diff"] for k, g in answer["graphs"].items()}}
    return out


def _edge_rows(export_dir: str, repeats: int, seed: int) -> list[dict[str, Any]]:
    """The edge planner's timing per N: warm up once, then ``repeats`` calls on random states."""
    from planners.edge import EdgeCEM
    from planners.edge_models import EdgeModels

    planner = EdgeCEM(EdgeModels(export_dir, threads=1))
    rng = np.random.default_rng(seed)
    rows = []
    for n in AGENTS:
        batches = rng.standard_normal((repeats + 1, n, planner.models.spec.obs_dim), dtype=np.float32)
        planner.plan(batches[0])
        results = [planner.plan(obs) for obs in batches[1:]]
        ms = np.asarray([r.elapsed_ms for r in results])
        rows.append({"agents": n, "ms_p50": float(np.median(ms)), "ms_p99": float(np.percentile(ms, 99)),
                     "rollout_ms": float(np.mean([r.rollout_ms for r in results])),
                     "plans_per_s": float(n / (ms.mean() / 1000))})
    return rows


def _bench_rows(model_dir: str, repeats: int, env: dict[str, str] | None) -> tuple[list[dict[str, Any]], str]:
    """`wm bench plan --model` per N on one thread: its rows and whether the native kernel ran."""
    out = wm("bench", "plan", "--model", model_dir, "--agents", ",".join(map(str, AGENTS)), "--repeats",
             str(repeats), "--threads", "1", env=env)
    keys = ("agents", "ms_p50", "ms_p99", "rollout_ms", "plans_per_s")
    return [{k: row[k] for k in keys} for row in out["rows"]], str(out["native"])


def _closed_loops(export_dir: str, model_dir: str, episodes: int, agents: int, seed: int) -> dict[str, Any]:
    """The edge planner's Nav2D closed loop with 2 zones, and `wm eval` of the torch planner beside it."""
    from planners.edge import EdgeCEM
    from planners.edge_loop import edge_closed_loop
    from planners.edge_models import EdgeModels
    from planners.edge_objective import EdgeObjective

    planner = EdgeCEM(EdgeModels(export_dir, threads=1), EdgeObjective("learned", zones=True))
    start = time.perf_counter()
    edge = dataclasses.asdict(edge_closed_loop(planner, episodes, agents, zones=2, seed=seed))
    edge["seconds"] = time.perf_counter() - start
    edge["violations"] = edge.pop("zone_steps")
    flags = ["--model", model_dir, "--agents", str(agents), "--episodes", str(episodes), "--no-fly-zones", "2",
             "--seed", str(seed)]
    torch_loops = {name: {k: wm("eval", *flags, *extra)[k] for k in LOOP_KEYS}
                   for name, extra in (("torch_no_shield", ["--no-shield"]), ("torch_shield", []))}
    return {"agents": agents, "zones": 2, "seed": seed, "edge": edge, **torch_loops}


def run(repeats: int, episodes: int, agents: int, seed: int) -> dict[str, Any]:
    from planners.config import PlanConfig
    from planners.config import CEMConfig

    load_start = os.getloadavg()[0]  # the machine is shared: say how busy it was
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir, trained = _model(tmp, seed)
        exports = _exports(model_dir, tmp)
        onnx_dir = exports["onnx"]["dir"]
        edge = _edge_rows(onnx_dir, repeats, seed)
        native, native_status = _bench_rows(model_dir, repeats, None)
        torch_rows, _ = _bench_rows(model_dir, repeats, TORCH_ONLY)
        loop = _closed_loops(onnx_dir, model_dir, episodes, agents, seed + 1)
        for fmt in exports.values():
            fmt["dir"] = Path(fmt["dir"]).name
    speedup = {str(e["agents"]): n["ms_p50"] / e["ms_p50"] for e, n in zip(edge, native)}
    return {"repeats": repeats, "threads": 1, "settings": dataclasses.asdict(PlanConfig()),
            "cem": dataclasses.asdict(CEMConfig()), "objective": "learned reward",
            "train": {"seconds": trained["seconds"], "dynamics_r2_min": trained["metrics"]["dynamics"]["r2_min"]},
            "exports": exports, "native": native_status,
            "timing": {"edge": edge, "native": native, "torch": torch_rows},
            "edge_speedup_vs_native": speedup, "closed_loop": loop,
            "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per agent count and planner")
    parser.add_argument("--episodes", type=int, default=100, help="closed-loop episodes counted")
    parser.add_argument("--agents", type=int, default=20, help="envs stepped together in the closed loop")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    record("export", run(args.repeats, args.episodes, args.agents, args.seed))


if __name__ == "__main__":
    main()
