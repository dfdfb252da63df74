"""`wm learn --json` end to end on a local Ray, with a tiny model."""

from __future__ import annotations

import pytest

from tests.cli.helpers import run_json
from tests.ray_fixtures import ray_local  # noqa: F401
from worldmodel.data import write_transitions
from worldmodel.envs.collect import collect
from worldmodel.registry import ModelRegistry

TINY = ("--ensemble-size", "2", "--hidden", "16", "--layers", "1", "--epochs", "3", "--patience", "3")


def test_learn_registers_and_promotes(ray_local, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    logs, registry = str(tmp_path / "logs"), str(tmp_path / "registry")
    write_transitions(logs, collect("Nav2D-v0", episodes=10, seed=2), "Nav2D-v0")
    code, out, err = run_json(capsys, "learn", "--data", logs, "--registry", registry, "--promote",
                              "--checkpoint-root", str(tmp_path / "checkpoints"), *TINY)
    assert code == 0, err
    assert out["command"] == "learn" and out["version"] == "1.0.0" and out["promoted"]
    assert out["holdout"]["better"] and out["holdout"]["candidate"]["rows"] > 0
    assert "retraining from" in err  # progress on stderr
    info = ModelRegistry(registry).production()
    assert info is not None and info.version == "1.0.0" and info.lineage["data_uri"] == logs
    assert info.metrics["dynamics"]["fit"]["epochs"] <= 3


def test_learn_refuses_a_schedule_on_an_embedded_ray(ray_local, tmp_path, capsys) -> None:  # noqa: F811
    code, out, err = run_json(capsys, "learn", "--data", str(tmp_path), "--registry", str(tmp_path),
                              "--schedule", "0 3 * * *")
    assert code == 1 and "--schedule needs a running cluster" in out["error"]
    code, out, _ = run_json(capsys, "learn", "--data", str(tmp_path), "--registry", str(tmp_path),
                            "--schedule", "0 3 * * 9", "--address", "auto")
    assert code == 1 and "day-of-week '9'" in out["error"]


def test_learn_reports_the_learners_error(ray_local, tmp_path, capsys) -> None:  # noqa: F811
    code, out, _ = run_json(capsys, "learn", "--data", str(tmp_path / "none"), "--registry", str(tmp_path / "r"),
                            "--checkpoint-root", str(tmp_path / "c"), *TINY)
    assert code == 1 and out["error"].startswith("wm: error: no trajectory logs under")
