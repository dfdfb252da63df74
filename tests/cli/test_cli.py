"""The `wm` command line: one JSON object with --json, one-line errors and non-zero exits on bad input."""

from __future__ import annotations

import shutil
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

    from cluster.commands import model as model_cmds

    real = model_cmds.load_model

    def noisy_load(path: str):
        thread = threading.Thread(target=print, args=("(raylet) WARNING: 8 PYTHON worker processes",))
        thread.start()
        thread.join()
        return real(path)

    monkeypatch.setattr(model_cmds, "load_model", noisy_load)
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
