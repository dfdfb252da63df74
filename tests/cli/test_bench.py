"""`wm bench plan`: one JSON object with positive throughput numbers and FLOPs counted by hand."""

from __future__ import annotations

import pytest

from cluster.commands.bench import parse_agents
from cluster.commands.bench_plan import plan_flops
from planners import PlanConfig

from .helpers import run_json

TINY = ["--samples", "8", "--horizon", "3", "--iterations", "1", "--repeats", "2",
        "--hidden", "8", "--layers", "1", "--ensemble-size", "2"]
# Layer sizes of TINY on Nav2D (S 6, A 2), FLOPs = 2 x in x out per layer:
DYNAMICS_FLOPS = 2 * (8 * 8 + 8 * 12)  # (s, a) 8 -> 8 hidden -> 12 (mean and log-variance of 6)
REWARD_FLOPS = 2 * (14 * 8 + 8 * 1)  # (s, a, s') 14 -> 8 hidden -> 1


def test_bench_plan_reports_rows_with_hand_counted_flops(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_json(capsys, "bench", "plan", "--agents", "1,4", *TINY)
    assert code == 0 and out["command"] == "bench plan" and out["planner"] == "cem"
    assert [row["agents"] for row in out["rows"]] == [1, 4]
    # CEM, ts1, P 1: iterations x K x H x (1 member x dynamics + reward), plus the audit H x E x dynamics.
    expected = 1 * 8 * 3 * (DYNAMICS_FLOPS + REWARD_FLOPS) + 3 * 2 * DYNAMICS_FLOPS
    assert expected == 15360
    for row in out["rows"]:
        assert row["flops_per_plan"] == expected
        for key in ("plans_per_s", "plans_per_s_per_core", "ms_p50", "ms_p99", "gflops", "fraction_of_peak",
                    "speedup_vs_reference"):
            assert row[key] > 0, (key, row)
        assert row["ms_p99"] >= row["ms_p50"] and "fallback_fraction" not in row
    assert out["peak_gflops"]["peak"] == max(out["peak_gflops"]["bmm_E_8192_64_64"], out["peak_gflops"]["square_2048"])
    assert out["reference"]["plans_per_s"] > 0 and out["reference"]["threads"] == 1
    assert out["threads"] >= 1 and out["settings"]["samples"] == 8


def test_bench_plan_with_budget_reports_fallbacks(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_json(capsys, "bench", "plan", "--planner", "gradient", "--agents", "2", "--budget-ms", "1000",
                            *TINY)
    assert code == 0 and out["settings"]["budget_ms"] == 1000
    row = out["rows"][0]
    assert 0 <= row["fallback_fraction"] <= 1 and row["iterations_mean"] <= 1
    # Gradient: the backward pass costs about twice the forward.
    expected = row["iterations_mean"] * 3 * 8 * 3 * (DYNAMICS_FLOPS + REWARD_FLOPS) + 3 * 2 * DYNAMICS_FLOPS
    assert row["flops_per_plan"] == pytest.approx(expected)


def test_plan_flops_expectation_evaluates_every_member() -> None:
    cfg = PlanConfig(horizon=15, samples=1, iterations=10, propagation="expectation", particles=4)
    # Particles do not apply to 'expectation'; every member sees every row.
    assert plan_flops("cem", cfg, 5, 100, 10) == 10 * 1 * 15 * (5 * 100 + 10) + 15 * 5 * 100
    assert plan_flops("gradient", cfg, 5, 100, 10) == 3 * 10 * 15 * (5 * 100 + 10) + 15 * 5 * 100


@pytest.mark.parametrize("args, message", [
    (["--agents", "1,0"], "--agents"),
    (["--agents", "1,x"], "'x'"),
    (["--agents", "2.5"], "'2.5'"),
])
def test_bench_plan_bad_input_is_one_line_error(capsys: pytest.CaptureFixture[str], args: list[str],
                                                message: str) -> None:
    code, out, err = run_json(capsys, "bench", "plan", *args)
    assert code == 1 and out["ok"] is False and message in out["error"]
    assert len(err.strip().splitlines()) == 1 and message in err


def test_bench_plan_unknown_planner_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_json(capsys, "bench", "plan", "--planner", "ilqr")
    assert code == 2 and "ilqr" in out["error"] and "Traceback" not in err


def test_bench_plan_defaults_are_the_served_settings() -> None:
    # One place for planner and model defaults: PlanConfig's and ModelConfig's fields.
    from cluster.cli import build_parser
    from worldmodel.config import ModelConfig

    args = build_parser(["bench", "plan"]).parse_args(["bench", "plan"])
    plan, model = PlanConfig(), ModelConfig()
    assert (args.horizon, args.samples, args.iterations, args.particles) == (
        plan.horizon, plan.samples, plan.iterations, plan.particles) == (30, 32, 1, 1)
    assert (args.hidden, args.layers, args.ensemble_size) == (model.hidden, model.layers, model.ensemble_size)


def test_parse_agents() -> None:
    assert parse_agents("1, 16,64") == [1, 16, 64]
    with pytest.raises(ValueError, match="-3"):
        parse_agents("-3")
