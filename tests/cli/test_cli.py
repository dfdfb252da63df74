"""The `wm` command line: one JSON object with --json, one-line errors and non-zero exits on bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cli import main

from .helpers import run_json

FAST_TRAIN = ["--ensemble-size", "2", "--hidden", "16", "--layers", "1", "--epochs", "2", "--patience", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Logs and a model made through the CLI once per module: (logs, model)."""
    work = tmp_path_factory.mktemp("cli")
    logs, model = work / "logs", work / "model"
    assert main(["collect", "--env", "Nav2D-v0", "--episodes", "6", "--out", str(logs), "--json"]) == 0
    assert main(["train", "--data", str(logs), "--out", str(model), "--version", "1.0.0", "--json", *FAST_TRAIN]) == 0
    return logs, model


def test_collect_train_info_round_trip(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    logs, model = tmp_path / "logs", tmp_path / "model"
    code, out, _ = run_json(capsys, "collect", "--env", "Nav2D-v0", "--episodes", "6", "--out", str(logs))
    assert code == 0 and out["episodes"] == 6 and out["transitions"] > 0 and out["files"] >= 1
    code, out, _ = run_json(capsys, "train", "--data", str(logs), "--out", str(model), "--version", "1.0.0",
                            *FAST_TRAIN)
    assert code == 0 and out["version"] == "1.0.0" and out["env"] == "Nav2D-v0"
    assert out["data_fingerprint"].startswith("sha256:")
    assert len(out["metrics"]["dynamics"]["r2"]) == 6 and Path(out["png"]).is_file()
    code, info, _ = run_json(capsys, "info", str(model))
    assert code == 0 and info["version"] == "1.0.0" and info["spec"]["env_id"] == "Nav2D-v0"
    assert info["model_config"]["ensemble_size"] == 2 and info["metrics"] == out["metrics"]
    # Human-readable output too.
    assert main(["info", str(model)]) == 0
    assert "world model v1.0.0" in capsys.readouterr().out


def test_train_lists_the_logs_once(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                   trained: tuple[Path, Path], tmp_path: Path) -> None:
    # One listing, so the fingerprint covers exactly the files trained on (and a remote tree is listed once).
    from worldmodel.data import reader

    listings: list[str] = []
    real = reader._list
    monkeypatch.setattr(reader, "_list", lambda fs, base: listings.append(base) or real(fs, base))
    logs, _ = trained
    code, out, _ = run_json(capsys, "train", "--data", str(logs), "--out", str(tmp_path / "m"), *FAST_TRAIN)
    assert code == 0 and len(listings) == 1, listings


def test_train_refuses_to_overwrite(capsys: pytest.CaptureFixture[str], trained: tuple[Path, Path]) -> None:
    capsys.readouterr()
    logs, model = trained
    code, out, err = run_json(capsys, "train", "--data", str(logs), "--out", str(model), *FAST_TRAIN)
    assert code == 1 and "already exists" in out["error"] and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["collect", "--env", "NoSuchEnv-v9", "--episodes", "1", "--out", "x"], "NoSuchEnv-v9"),
    (["collect", "--env", "CartPole-v1", "--episodes", "1", "--out", "x"], "Box"),
    (["collect", "--env", "Nav2D-v0", "--episodes", "0", "--out", "x"], "--episodes"),
    (["collect", "--env", "Nav2D-v0", "--episodes", "1", "--out", "x", "--policy", "genius"], "genius"),
    (["train", "--data", "/nonexistent/logs", "--out", "m"], "/nonexistent/logs"),
    (["train", "--data", "x", "--out", "m", "--version", "one"], "semantic version"),
    (["info", "/nonexistent/model"], "/nonexistent/model"),
])
def test_bad_input_is_one_line_error(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch,
                                     args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_json(capsys, *args)
    assert code == 1 and out["ok"] is False and message in out["error"]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_json_stdout_is_only_the_result(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                        trained: tuple[Path, Path]) -> None:
    # Ray's driver prints the raylet's warnings to stdout from a thread of its own, mid-command.
    import threading

    from worldmodel import artifact

    real = artifact.load_model

    def noisy_load(path: str):
        thread = threading.Thread(target=print, args=("(raylet) WARNING: 8 PYTHON worker processes",))
        thread.start()
        thread.join()
        return real(path)

    monkeypatch.setattr(artifact, "load_model", noisy_load)
    _, model = trained
    code, out, err = run_json(capsys, "info", str(model))
    assert code == 0 and out["command"] == "info" and "(raylet) WARNING" in err
    assert main(["info", str(model)]) == 0  # without --json, stdout is the readable lines, noise and all
    assert "(raylet) WARNING" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["collect", "--env", "Nav2D-v0"], ["train", "--epochs", "many"], ["fly"], []])
def test_usage_errors_exit_2_with_json(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, out, err = run_json(capsys, *args)
    assert code == 2 and out["ok"] is False and err.strip()


def test_bad_log_file_names_file_and_column(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    bad = tmp_path / "logs" / "2026-01-01" / "a"
    bad.mkdir(parents=True)
    pq.write_table(pa.table({"obs": [1.0, 2.0]}), bad / "part-0.parquet")
    code, out, _ = run_json(capsys, "train", "--data", str(tmp_path / "logs"), "--out", str(tmp_path / "m"),
                            "--env", "Nav2D-v0")
    assert code == 1 and "part-0.parquet" in out["error"]


def test_corrupted_model_named_by_info(capsys: pytest.CaptureFixture[str], trained: tuple[Path, Path],
                                       tmp_path: Path) -> None:
    capsys.readouterr()
    model = tmp_path / "model"
    shutil.copytree(trained[1], model)
    (model / "reward.pt").write_bytes(b"garbage")
    code, out, _ = run_json(capsys, "info", str(model))
    assert code == 1 and "reward.pt: checksum mismatch" in out["error"]


def test_eval_reports_closed_loop_stats_and_png(capsys: pytest.CaptureFixture[str], trained: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    capsys.readouterr()
    png = tmp_path / "eval.png"
    code, out, _ = run_json(capsys, "eval", "--model", str(trained[1]), "--agents", "2", "--episodes", "2",
                            "--horizon", "3", "--samples", "8", "--iterations", "1", "--no-fly-zones",
                            "--png", str(png))
    assert code == 0 and out["episodes"] >= 2 and out["agents"] == 2 and out["no_fly_zones"] == 2
    for key in ("success_rate", "violations", "fallbacks", "plan_ms_p99", "plans_per_s", "mean_return"):
        assert key in out
    assert png.stat().st_size > 10_000
    code, out, _ = run_json(capsys, "eval", "--model", str(trained[1]), "--planner", "astar")
    assert code == 2 and "astar" in out["error"]


def test_eval_defaults_are_plan_configs_and_the_goal_objective(capsys: pytest.CaptureFixture[str],
                                                               trained: tuple[Path, Path]) -> None:
    from cluster.cli import build_parser
    from planners import PlanConfig

    args = build_parser(["eval"]).parse_args(["eval", "--model", "m"])
    defaults = PlanConfig()
    assert (args.horizon, args.samples, args.iterations, args.particles, args.propagation) == (
        defaults.horizon, defaults.samples, defaults.iterations, defaults.particles, defaults.propagation)
    code, out, _ = run_json(capsys, "eval", "--model", str(trained[1]), "--agents", "2", "--episodes", "2",
                            "--horizon", "3", "--objective", "goal", "--no-fly-zones")
    assert code == 0 and out["objective"] == "goal" and out["planner_settings"]["noise_beta"] == 2.0
    code, out, _ = run_json(capsys, "eval", "--model", str(trained[1]), "--objective", "analytic")
    assert code == 2 and "analytic" in out["error"]


def test_mbrl_defaults_are_the_pets_loops_own() -> None:
    from cluster.cli import build_parser
    from planners.config import PETS_MODEL, PETS_PLAN, PETS_TRAIN

    args = build_parser(["mbrl"]).parse_args(["mbrl", "--env", "Pendulum-v1", "--episodes", "3"])
    assert (args.horizon, args.samples, args.iterations) == (PETS_PLAN.horizon, PETS_PLAN.samples,
                                                             PETS_PLAN.iterations)
    assert (args.hidden, args.layers, args.activation) == (PETS_MODEL.hidden, PETS_MODEL.layers, "silu")
    assert (args.epochs, args.batch_size, args.patience) == (PETS_TRAIN.epochs, PETS_TRAIN.batch_size,
                                                             PETS_TRAIN.patience)


def test_mbrl_flags_build_one_config_with_the_configs_defaults() -> None:
    from cluster.cli import build_parser
    from cluster.commands.mbrl import mbrl_config
    from planners.config import PETS_MODEL, PETS_PLAN, MBRLConfig

    args = build_parser(["mbrl"]).parse_args(["mbrl", "--env", "Pendulum-v1", "--episodes", "3", "--seed", "4"])
    cfg = mbrl_config(args)
    defaults = MBRLConfig("Pendulum-v1", 3)
    assert (cfg.env_id, cfg.episodes, cfg.seed, cfg.plan, cfg.model) == (
        "Pendulum-v1", 3, 4, dataclasses.replace(PETS_PLAN, seed=4), PETS_MODEL)
    assert (cfg.planner, cfg.random_episodes, cfg.eval_episodes, cfg.cem, cfg.target_return) == (
        defaults.planner, defaults.random_episodes, defaults.eval_episodes, defaults.cem, defaults.target_return)
    args = build_parser(["mbrl"]).parse_args(["mbrl", "--env", "Pendulum-v1", "--episodes", "1"])
    with pytest.raises(ValueError, match="must exceed random_episodes"):
        mbrl_config(args)


def test_eval_flags_default_to_eval_configs_and_name_the_disagreement_penalty() -> None:
    from cluster.cli import build_parser
    from cluster.commands.plan import plan_config
    from planners.config import DEFAULT_PLANNER, EvalConfig

    args = build_parser(["eval"]).parse_args(["eval", "--model", "m", "--disagreement-penalty", "0.5"])
    defaults = EvalConfig()
    assert (args.planner, args.agents, args.episodes, args.objective, args.no_fly_zones, args.seed) == (
        DEFAULT_PLANNER, defaults.agents, defaults.episodes, defaults.objective, defaults.no_fly_zones, defaults.seed)
    assert plan_config(args).disagreement_penalty == 0.5


def test_undefined_r2_prints_as_n_a() -> None:
    from cluster.commands.info import summary_lines

    metrics = {"dynamics": {"r2": [0.5, None], "r2_delta": [None, 0.25]}, "reward": {"r2": [None]}}
    lines = summary_lines(metrics)
    assert "n/a" in lines[0] and "0.5000" in lines[0] and lines[-1] == "reward test R^2 n/a"


_PROBE = """
import json, sys, time
start = time.perf_counter()
from cluster.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "seconds": time.perf_counter() - start,
                  "heavy": sorted(m for m in ("torch", "ray") if m in sys.modules)}), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["eval", "--help"], ["train", "--help"], ["eval", "--bogus"],
                                  ["tune", "--help"], ["models", "--help"], ["models", "list", "--help"],
                                  ["models", "promote", "--help"], ["collect", "--help"], ["info", "--help"],
                                  ["bench", "plan", "--help"], ["mbrl", "--help"], ["learn", "--help"],
                                  ["serve", "--help"], ["fleet", "--help"], ["demo", "--help"],
                                  ["ingest", "--help"]])
def test_help_and_usage_errors_load_neither_torch_nor_ray(args: list[str]) -> None:
    # Only the command being run is imported, and its heavy imports wait for its handler: torch and Ray
    # are what took help 4 s to answer (the probe's own time is not asserted: a loaded machine varies).
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=60)
    probe = json.loads(proc.stderr.strip().splitlines()[-1])
    assert probe["heavy"] == [], probe
    assert probe["code"] == (2 if "--bogus" in args else 0), proc.stderr

