"""The warehouse benchmark's targets and page: known verdicts from a made-up result, every field filled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import docs
from benchmarks.warehouse import SWAP, met

PAGE = next(p for p in docs.PAGES if p.name == "warehouse")


def row(name: str, model: str, collisions: float, deliveries: float, shelf: int = 0,
        bumper: bool = True) -> dict[str, Any]:
    return {"name": name, "model": model, "bumper": bumper, "floors": 3, "robots": 50, "ticks": 600,
            "collisions_per_robot_hour": collisions, "shelf_collisions": shelf, "deliveries_per_hour": deliveries, "plan_ms": 40.0, "plan_ms_p95": 55.0,
            "humans": 5, "collisions": int(collisions), "deliveries": int(deliveries)}


def errors(nmse: float) -> dict[str, Any]:
    return {"rows": 100, "rmse": [0.01, 0.01, 0.05, 0.05], "nmse": [nmse] * 4, "nmse_mean": nmse}


def result(coordinated: float = 10.0, swap: float = 30.0, big_ms: float = 80.0) -> dict[str, Any]:
    rows = [row("coordinated", "fleet", coordinated, 900), row("independent", "per_agent", 60.0, 850),
            row("constant-velocity", "per_agent", 25.0, 880), row(SWAP, "per_agent", swap, 900),
            row("coordinated", "fleet", 8.0, 890, bumper=False),
            row("independent", "per_agent", 70.0, 870, bumper=False)]
    pred = {"test_rows": 3000, "near_fraction": 0.2, "near_m": 1.2, "near_error_ratio": 2.5,
            "fleet": {"all": errors(0.1), "near": errors(0.2)}, "per_agent": {"all": errors(0.2), "near": errors(0.5)}}
    big = {"robots": 200, "humans": 20, "threads": 2, "calls": 5, "plan_ms_median": big_ms, "plan_ms": [big_ms] * 5,
           "fields_seconds": 20.0, "floor_m": [59.0, 43.0]}
    models = {name: {"seconds": 300.0, "epochs": 40, "r2_min": 0.99} for name in ("fleet", "per_agent")}
    floor = {"ticks": 300, "collisions_per_robot_hour": 12.0, "shelf_collisions": 0, "deliveries_per_hour": 880.0,
             "shielded": 3}
    served = {name: {"seconds": 30.0, "requests": 15000, "late_ticks": 1, "fallbacks_by_reason": {"deadline": 2},
                     "latency_ms": {"p50": 60.0, "p99": 90.0}, "floor": floor} for name in ("per_robot", "batch")}
    return {"benchmark": "warehouse", "date": "2026-12-06", "robots": 50, "ticks": 600, "floors": 3, "seed": 0,
            "threads": 2,
            "collect": {"episodes": 10, "transitions": 300000, "seconds": 60.0}, "models": models,
            "settings": {"horizon": 15, "samples": 32, "iterations": 1, "seed": 0},
            "cem": {"elites": 4, "alpha": 0.1, "init_std": 0.5, "noise_beta": 2.0}, "closed_loop": rows,
            "weights": {"progress": 0.3, "contact": 10.0, "proximity": 20.0, "margin": 0.1, "lane_penalty": 3.0},
            "shield": {"horizon": 5}, "served": served,
            "prediction": pred, "big": big, "met": met(rows, pred, big)}


def test_targets_follow_the_issue() -> None:
    assert all(result()["met"].values())
    failed = result(coordinated=13.0, swap=14.0, big_ms=120.0)["met"]  # only 4.6x under (a); swap barely worse
    assert not failed["collisions"] and not failed["model_matters"] and not failed["big_floor"]
    assert failed["throughput"] and failed["shelf"] and failed["prediction"]


def test_the_page_renders_every_field_from_a_result(tmp_path: Path) -> None:
    (tmp_path / PAGE.source).write_text(json.dumps(result()))
    text = docs.render(PAGE, results=tmp_path)
    assert text.startswith(f"# {PAGE.title}\n") and "$" not in text and "None" not in text
    assert "| coordinated | multi-agent (fleet) | yes | 10.0 | 0 | 900 |" in text
    assert "| independent | per-agent ensemble | no | 70.0 | 0 | 870 |" in text
    assert "98% of the coordinated planner's deliveries" in " ".join(text.split())  # 870 of 890, without bumpers
    assert "not met" not in text and "2.50x" in text
    assert "| one batch per tick | 15,000 in 30 s | 60.0 / 90.0 | 1 | 2 | 12.0 | 0 | 880 |" in text
    assert "6 of 6 met" in docs.results_table((PAGE,), tmp_path)
    assert "None" not in PAGE.headline(result())
