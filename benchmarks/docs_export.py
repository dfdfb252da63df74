"""The edge export page's fields and headline (``benchmarks/export.py``'s result)."""

from __future__ import annotations

from typing import Any

from benchmarks.docs_text import num, pct, table, verdict

Json = dict[str, Any]
_PLANNERS = (("edge", "edge: numpy + onnxruntime (ONNX export)"), ("native", "torch CEM, fleetwm's native kernel"),
             ("torch", "torch CEM, torch's path (FLEETWM_NATIVE=0)"))


def _exports_table(exports: Json) -> str:
    graphs = list(exports["onnx"]["max_abs_diff"])
    rows = [[fmt, num(e["seconds"], 1), *(f"{e['max_abs_diff'][g]:.2g}" for g in graphs), f"{e['tolerance']:g}"]
            for fmt, e in exports.items()]
    return table(["format", "`wm export` seconds", *(f"{g}: max abs diff" for g in graphs), "tolerance"], rows)


def _timing_table(timing: Json) -> str:
    rows = []
    for key, label in _PLANNERS:
        for row in timing[key]:
            rows.append([label, row["agents"], num(row["ms_p50"], 2), num(row["ms_p99"], 2), num(row["rollout_ms"], 2),
                         num(row["plans_per_s"], 0)])
    return table(["planner", "agents N", "ms per call p50", "p99", "rollouts ms (mean)", "agent plans/s"], rows)


def _loop_table(loop: Json) -> str:
    labels = (("edge", "edge planner, no shield"), ("torch_no_shield", "torch CEM (native kernel), no shield"),
              ("torch_shield", "torch CEM (native kernel), with its shield (served)"))
    rows = [[label, loop[key]["episodes"], pct(loop[key]["success_rate"]), loop[key]["violations"],
             loop[key]["episodes_with_violation"], num(loop[key]["plan_ms_mean"], 2), num(loop[key]["plan_ms_p99"], 2)]
            for key, label in labels]
    return table(["planner", "episodes", "success", "steps inside a zone", "episodes with one", "ms per call",
                  "p99"], rows)


def _within(r: Json) -> bool:
    return all(max(e["max_abs_diff"].values()) <= e["tolerance"] for e in r["exports"].values())


def export_fields(r: Json) -> dict[str, str]:
    s, cem, loop = r["settings"], r["cem"], r["closed_loop"]
    speed = r["edge_speedup_vs_native"]
    return {"exports_table": _exports_table(r["exports"]), "timing_table": _timing_table(r["timing"]),
            "loop_table": _loop_table(loop), "repeats": str(r["repeats"]), "native": r["native"],
            "settings": (f"horizon {s['horizon']}, {s['samples']} samples, {s['iterations']} CEM round, "
                         f"{s['propagation']} with {s['particles']} particle, {cem['elites']} elites, "
                         f"noise exponent {cem['noise_beta']}, initial std {cem['init_std']}"),
            "r2": num(r["train"]["dynamics_r2_min"], 4), "agents": str(loop["agents"]), "seed": str(loop["seed"]),
            "speed_1": num(speed["1"], 2), "speed_100": num(speed["100"], 2), "target": verdict(_within(r)),
            "load": _load(r)}


def _load(r: Json) -> str:
    load = r.get("load_average_1min")
    if load is None:
        return "not recorded"
    return f"{num(load['start'], 1)} at the start, {num(load['end'], 1)} at the end"


def export_headline(r: Json) -> str:
    edge, native = r["timing"]["edge"], r["timing"]["native"]
    worst = max(max(e["max_abs_diff"].values()) for e in r["exports"].values())
    loop = r["closed_loop"]["edge"]
    return (f"ONNX and TorchScript within {worst:.1g} of torch; edge planner (onnxruntime, no torch) "
            f"{num(edge[0]['ms_p50'], 1)} / {num(edge[-1]['ms_p50'], 0)} ms for {edge[0]['agents']} / "
            f"{edge[-1]['agents']} agents against the native kernel's {num(native[0]['ms_p50'], 1)} / "
            f"{num(native[-1]['ms_p50'], 0)} ms; {pct(loop['success_rate'])} success, {loop['violations']} zone "
            f"steps over {loop['episodes']} episodes")
