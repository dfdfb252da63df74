"""`wm eval` on Warehouse-v1: a fleet planner and the baselines on a tiny floor, through the commands a user types."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cluster.cli import build_parser, main
from cluster.commands.eval_warehouse import check_lone_agent_args
from planners.fleet_cem import FLEET_CEM, FleetPlanConfig
from planners.fleet_shield import FleetShieldConfig

from tests.thread_fixtures import one_thread  # noqa: F401  (autouse: one torch thread)
from tests.warehouse_fixtures import warehouse_models  # noqa: F401

from .helpers import run_json

FLOOR = ["--robots", "4", "--ticks", "12", "--horizon", "4", "--samples", "8"]


@pytest.fixture(scope="module")
def models(warehouse_models: dict[str, str]) -> dict[str, str]:  # noqa: F811
    """A fleet model and a per-agent model ('agent'), `wm train`ed for seconds on the same short `wm collect`."""
    return warehouse_models


def test_coordinated_and_both_baselines_run_on_one_floor_and_draw_it(capsys: pytest.CaptureFixture[str],
                                                                     models: dict[str, str], tmp_path: Path) -> None:
    png, gif = tmp_path / "floor.png", tmp_path / "floor.gif"
    code, out, _ = run_json(capsys, "eval", "--model", models["fleet"], "--env", "Warehouse-v1", *FLOOR,
                            "--baseline-model", models["agent"], "--png", str(png), "--gif", str(gif))
    assert code == 0, out
    assert (out["planner"], out["robots"], out["ticks"], out["env"]) == ("coordinated", 4, 12, "Warehouse-v1")
    assert out["settings"] == {"horizon": 4, "samples": 8, "iterations": FleetPlanConfig.iterations, "seed": 0}
    assert out["cem"]["elites"] == FLEET_CEM.elites
    assert set(out["baselines"]) == {"independent", "constant-velocity"}
    for row in (out, *out["baselines"].values()):
        assert row["plan_ms"] > 0 and row["collisions_per_robot_hour"] >= 0 and row["shelf_collisions"] >= 0
        assert row["deliveries_per_hour"] >= 0
    with Image.open(png) as image:
        assert image.format == "PNG"
    with Image.open(gif) as image:
        assert image.n_frames == 13  # the start and every tick


def test_the_fleet_planners_own_defaults_apply_unless_given(capsys: pytest.CaptureFixture[str],
                                                            models: dict[str, str]) -> None:
    code, out, _ = run_json(capsys, "eval", "--model", models["agent"], "--planner", "constant-velocity",
                            "--robots", "2", "--ticks", "2", "--seed", "3")
    assert code == 0, out
    assert out["settings"] == {**vars(FleetPlanConfig()), "seed": 3} and out["baselines"] == {}


@pytest.mark.parametrize("model, args, message", [
    ("agent", [], "--planner coordinated needs a fleet model"),
    ("fleet", ["--planner", "independent"], "per-agent model"),
    ("fleet", ["--baseline-model", "{fleet}"], "--baseline-model: --planner independent plans each robot"),
    ("fleet", ["--planner", "cem"], "--planner cem plans lone agents"),
    ("fleet", ["--agents", "3"], "--agents is for lone-agent envs"),
    ("fleet", ["--env", "Nav2D-v0"], "is a model of Warehouse-v1"),
    ("fleet", ["--robots", "0"], "--robots must be >= 1"),
    ("agent", ["--planner", "independent", "--baseline-model", "{agent}"], "beside --planner coordinated"),
])
def test_wrong_models_and_options_are_one_line_errors(capsys: pytest.CaptureFixture[str], models: dict[str, str],
                                                      model: str, args: list[str], message: str) -> None:
    argv = ["eval", "--model", models[model], *(a.format(**models) for a in args), "--ticks", "1"]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_floor_options_are_refused_for_lone_agent_models() -> None:
    argv = ["eval", "--model", "m", "--robots", "4"]
    args = build_parser(argv).parse_args(argv)
    with pytest.raises(ValueError, match="--robots is for Warehouse-v1 models only"):
        check_lone_agent_args(args, "Nav2D-v0")
    argv = ["eval", "--model", "m", "--planner", "coordinated"]
    with pytest.raises(ValueError, match="--planner coordinated is for Warehouse-v1"):
        check_lone_agent_args(build_parser(argv).parse_args(argv), "Nav2D-v0")


def test_the_coordinated_planner_is_shielded_unless_no_shield_and_the_baselines_never(
        capsys: pytest.CaptureFixture[str], models: dict[str, str]) -> None:
    code, out, _ = run_json(capsys, "eval", "--model", models["fleet"], *FLOOR, "--baseline-model", models["agent"])
    assert code == 0, out
    assert out["shield"]["horizon"] == 4  # the shield's default, 5, at most the plan's --horizon 4
    assert out["shield"]["shelf_clearance"] == FleetShieldConfig.shelf_clearance
    assert out["shield_ms"] > 0 and out["shielded_agent_contact"] >= 0 and out["shielded_shelf"] >= 0
    assert all(row["shield_ms"] == 0 for row in out["baselines"].values())
    code, out, _ = run_json(capsys, "eval", "--model", models["fleet"], *FLOOR, "--no-shield", "--ticks", "2")
    assert code == 0, out
    assert out["shield"] is None and out["shield_ms"] == 0 and out["shielded_shelf"] == 0
    code, out, _ = run_json(capsys, "eval", "--model", models["fleet"], *FLOOR, "--shield-horizon", "2", "--ticks", "2")
    assert code == 0, out
    assert out["shield"]["horizon"] == 2


def test_a_shield_horizon_beyond_the_plan_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                                              models: dict[str, str]) -> None:
    assert main(["eval", "--model", models["fleet"], *FLOOR, "--shield-horizon", "9"]) != 0
    err = capsys.readouterr().err
    assert "--shield-horizon must be between 1 and the plan's --horizon 4, got 9" in err and "Traceback" not in err
