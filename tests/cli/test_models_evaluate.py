"""`wm models register` and `wm models evaluate` on tiny trained models: verified registration, scores by horizon
from a directory or a registry, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.cli import main

from .helpers import run_json

FAST_TRAIN = ["--hidden", "16", "--layers", "1", "--epochs", "2", "--patience", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Nav2D logs, a tiny ensemble and a tiny GRU trained on them, made through the CLI once per module."""
    work = tmp_path_factory.mktemp("models-evaluate")
    made = {"logs": work / "logs", "ensemble": work / "ensemble", "gru": work / "gru"}
    assert main(["collect", "--env", "Nav2D-v0", "--episodes", "4", "--out", str(made["logs"]), "--json"]) == 0
    for kind in ("ensemble", "gru"):
        size = ["--ensemble-size", "2"] if kind == "ensemble" else []
        assert main(["train", "--data", str(made["logs"]), "--out", str(made[kind]), "--dynamics", kind,
                     "--version", "0.3.0", "--quiet", "--json", *size, *FAST_TRAIN]) == 0
    return made


def test_register_verifies_then_refuses_the_same_artifact_twice(capsys: pytest.CaptureFixture[str],
                                                                 trained: dict[str, Path], tmp_path: Path) -> None:
    registry = str(tmp_path / "reg")
    code, out, _ = run_json(capsys, "models", "register", str(trained["ensemble"]), "--registry", registry)
    assert code == 0 and (out["version"], out["stage"], out["artifact_version"]) == ("1.0.0", "candidate", "0.3.0")
    assert out["artifact_digest"].startswith("sha256:")
    code, out, err = run_json(capsys, "models", "register", str(trained["ensemble"]), "--registry", registry)
    assert code == 1 and "already registered" in out["error"] and "as version 1.0.0" in out["error"]
    assert len(err.strip().splitlines()) == 1
    # Another architecture is a new MAJOR; its parent and stage are the caller's.
    code, out, _ = run_json(capsys, "models", "register", str(trained["gru"]), "--registry", registry,
                            "--parent", "1.0.0", "--stage", "production")
    assert code == 0 and (out["version"], out["stage"], out["parent"]) == ("2.0.0", "production", "1.0.0")
    code, out, _ = run_json(capsys, "models", "show", "production", "--registry", registry)
    assert out["lineage"]["source"] == str(trained["gru"]) and out["lineage"]["artifact_version"] == "0.3.0"


def test_register_refuses_what_is_not_a_sound_artifact(capsys: pytest.CaptureFixture[str], trained: dict[str, Path],
                                                       tmp_path: Path) -> None:
    registry = str(tmp_path / "reg")
    code, out, _ = run_json(capsys, "models", "register", str(tmp_path), "--registry", registry)
    assert code == 1 and "not a fleetwm model directory" in out["error"]
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in trained["ensemble"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps(manifest | {"version": "v1"}))
    code, out, _ = run_json(capsys, "models", "register", str(broken), "--registry", registry)
    assert code == 1 and "semantic version" in out["error"] and "'v1'" in out["error"]
    (broken / "reward.pt").write_bytes(b"tampered")
    code, out, _ = run_json(capsys, "models", "register", str(broken), "--registry", registry)
    assert code == 1 and "reward.pt: checksum mismatch" in out["error"]
    code, out, _ = run_json(capsys, "models", "list", "--registry", registry)
    assert out["versions"] == []


@pytest.mark.parametrize("kind", ["ensemble", "gru"])
def test_evaluate_a_directory_and_the_same_registered_version_alike(capsys: pytest.CaptureFixture[str],
                                                                     trained: dict[str, Path], tmp_path: Path,
                                                                     kind: str) -> None:
    logs, png = str(trained["logs"]), tmp_path / "by_horizon.png"
    code, out, err = run_json(capsys, "models", "evaluate", str(trained[kind]), "--data", logs, "--horizon", "5",
                              "--png", str(png))
    assert code == 0 and out["kind"] == kind and out["version"] == "0.3.0" and out["multi_step_skipped"] is None
    assert [s["rows"] for s in out["by_horizon"]] == [out["windows"]] * 5 and out["windows"] > 0
    assert out["one_step"]["mse"] > 0 and 0 <= out["one_step"]["coverage_1sigma"] <= 1
    assert out["config"]["horizon"] == 5 and png.stat().st_size > 0 and out["png"] == str(png)
    assert "one-step: " in err and "multi-step: " in err  # progress on stderr
    registry = str(tmp_path / "reg")
    assert main(["models", "register", str(trained[kind]), "--registry", registry, "--json"]) == 0
    code, again, _ = run_json(capsys, "models", "evaluate", "latest", "--registry", registry, "--data", logs,
                              "--horizon", "5", "--quiet")
    assert code == 0 and again["version"] == "1.0.0"
    assert again["one_step"] == out["one_step"] and again["by_horizon"] == out["by_horizon"]
    assert main(["models", "evaluate", str(trained[kind]), "--data", logs, "--horizon", "2", "--quiet"]) == 0
    assert "open loop" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["1.0.0"], "'1.0.0' is not a model directory; pass --registry URI"),
    (["MODEL", "--horizon", "0"], "horizon must be an integer >= 1, got 0"),
    (["MODEL", "--horizon", "5000"], "no episode in the logs has 5000 consecutive steps"),
    (["MODEL", "--data", "/nonexistent/logs"], "no trajectory logs under '/nonexistent/logs'"),
])
def test_evaluate_errors_are_one_line(capsys: pytest.CaptureFixture[str], trained: dict[str, Path],
                                      args: list[str], message: str) -> None:
    args = [str(trained["ensemble"]) if a == "MODEL" else a for a in args]
    data = [] if "--data" in args else ["--data", str(trained["logs"])]
    code, out, err = run_json(capsys, "models", "evaluate", *args, *data, "--quiet")
    assert code == 1 and message in out["error"] and len(err.strip().splitlines()) == 1
