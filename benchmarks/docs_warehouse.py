"""The warehouse page's fields and headline (``benchmarks/warehouse.py``'s result)."""

from __future__ import annotations

from typing import Any

from benchmarks.docs_text import num, table, verdict

Json = dict[str, Any]
_MODEL_NAMES = {"fleet": "multi-agent (fleet)", "per_agent": "per-agent ensemble"}


def _by_name(r: Json, bumper: bool) -> dict[str, Json]:
    """The closed-loop rows on floors with (or without) bumpers, by planner name."""
    return {row["name"]: row for row in r["closed_loop"] if row["bumper"] == bumper}


def _loop_table(rows: list[Json]) -> str:
    headers = ["planner", "model", "bumpers", "collisions per robot-hour", "shelf collisions", "deliveries per hour",
               "planning ms per tick (p95)"]
    return table(headers, [[r["name"], _MODEL_NAMES.get(r["model"], r["model"]), "yes" if r["bumper"] else "no",
                            num(r["collisions_per_robot_hour"]),
                            num(r["shelf_collisions"], 0), num(r["deliveries_per_hour"], 0),
                            f"{num(r['plan_ms'])} ({num(r['plan_ms_p95'])})"] for r in rows])


def _prediction_table(pred: Json) -> str:
    headers = ["model", "nMSE near others", "nMSE all rows", "RMSE near others: position (m)",
               "RMSE near others: velocity (m/s)"]
    rows = []
    for name in ("fleet", "per_agent"):
        near, every = pred[name]["near"], pred[name]["all"]
        rmse = near["rmse"]
        rows.append([_MODEL_NAMES[name], num(near["nmse_mean"], 3), num(every["nmse_mean"], 3),
                     f"{num(rmse[0], 4)} / {num(rmse[1], 4)}", f"{num(rmse[2], 4)} / {num(rmse[3], 4)}"])
    return table(headers, rows)


def _models_table(models: Json) -> str:
    return table(["model", "`wm train` seconds", "epochs", "test R^2 min (predicted dims)"],
                 [[_MODEL_NAMES[name], num(m["seconds"], 0), num(m["epochs"], 0), num(m["r2_min"], 4)]
                  for name, m in models.items()])


def _served_table(r: Json) -> str:
    headers = ["requests", "sent", "latency p50 / p99 (ms)", "late ticks", "deadline fallbacks",
               "collisions per robot-hour", "shelf collisions", "deliveries per hour"]
    rows = []
    for name, label in (("per_robot", "one per robot"), ("batch", "one batch per tick")):
        run = r["served"][name]
        floor, lat = run["floor"], run["latency_ms"]
        rows.append([label, f"{num(run['requests'], 0)} in {num(run['seconds'], 0)} s",
                     f"{num(lat['p50'], 1)} / {num(lat['p99'], 1)}", num(run["late_ticks"], 0),
                     num(run["fallbacks_by_reason"].get("deadline", 0), 0), num(floor["collisions_per_robot_hour"]),
                     num(floor["shelf_collisions"], 0), num(floor["deliveries_per_hour"], 0)])
    return table(headers, rows)


def warehouse_fields(r: Json) -> dict[str, str]:
    rows, free = _by_name(r, True), _by_name(r, False)
    ours, a, b = rows["coordinated"], rows["independent"], rows["constant-velocity"]
    free_ours, free_a = free["coordinated"], free["independent"]
    met, pred, big, s, cem = r["met"], r["prediction"], r["big"], r["settings"], r["cem"]
    c, d = "collisions_per_robot_hour", "deliveries_per_hour"
    return {
        "robots": str(r["robots"]), "ticks": num(r["ticks"], 0), "seconds": num(r["ticks"] / 10, 0),
        "floors": str(r["floors"]), "floor_seeds": f"{r['seed']} to {r['seed'] + r['floors'] - 1}",
        "threads": str(r["threads"]), "humans": str(ours["humans"]),
        "ours_deliveries": num(ours[d], 0), "a_deliveries": num(a[d], 0), "b_deliveries": num(b[d], 0),
        "free_ours_deliveries": num(free_ours[d], 0), "free_a_deliveries": num(free_a[d], 0),
        "free_ours_collisions": num(free_ours[c]), "free_a_collisions": num(free_a[c]),
        "free_a_share": f"{free_a[d] / max(free_ours[d], 1e-9):.0%}",
        "ours_vs_a": num(a[c] / max(ours[c], 1e-9), 0),
        "transitions": num(r["collect"]["transitions"], 0), "floor_episodes": str(r["collect"]["episodes"]),
        "models_table": _models_table(r["models"]), "loop_table": _loop_table(r["closed_loop"]),
        "settings": (f"horizon {s['horizon']} steps, {s['samples']} samples per robot, {s['iterations']} CEM round per "
                     f"tick, {cem['elites']} elites, initial std {cem['init_std']}, "
                     f"noise exponent {cem['noise_beta']}"),
        "ours_collisions": num(ours[c]), "a_collisions": num(a[c]), "b_collisions": num(b[c]),
        "collision_target": verdict(met["collisions"]), "throughput_target": verdict(met["throughput"]),
        "shelf_target": verdict(met["shelf"]), "swap_target": verdict(met["model_matters"]),
        "prediction_table": _prediction_table(pred), "near_rows": num(pred["fleet"]["near"]["rows"], 0),
        "test_rows": num(pred["test_rows"], 0), "near_m": num(pred["near_m"], 1),
        "near_ratio": num(pred["near_error_ratio"], 2), "prediction_target": verdict(met["prediction"]),
        "big_robots": str(big["robots"]), "big_humans": str(big["humans"]), "big_ms": num(big["plan_ms_median"], 1),
        "big_threads": str(big["threads"]), "big_calls": str(big["calls"]),
        "big_fields": num(big["fields_seconds"], 1),
        "big_floor": f"{num(big['floor_m'][0], 0)} x {num(big['floor_m'][1], 0)} m",
        "big_target": verdict(met["big_floor"]), "target": f"{sum(met.values())} of {len(met)} met",
        "weights": ", ".join(f"{k} {v:g}" for k, v in r["weights"].items()),
        "shield": f"horizon {r['shield']['horizon']} steps", "served_table": _served_table(r),
    }


def warehouse_headline(r: Json) -> str:
    rows = _by_name(r, True)
    ours, a, b = rows["coordinated"], rows["independent"], rows["constant-velocity"]
    c, d = "collisions_per_robot_hour", "deliveries_per_hour"
    return (f"{r['robots']} robots with bumpers at 10 Hz, {r['floors']} floors: coordinated and shielded "
            f"{num(ours[c])} collisions per robot-hour, "
            f"{num(ours['shelf_collisions'], 0)} shelf collisions, {num(ours[d], 0)} deliveries per hour, against "
            f"{num(a[c])} / {num(a[d], 0)} (independent) and {num(b[c])} / {num(b[d], 0)} (constant velocity); "
            f"{r['big']['robots']} robots planned in {num(r['big']['plan_ms_median'], 1)} ms; near others the fleet "
            f"model's error is {num(r['prediction']['near_error_ratio'], 2)}x lower")
