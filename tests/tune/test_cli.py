"""`wm tune --json` end to end on a local Ray with tiny models, and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.helpers import run_json
from tests.ray_fixtures import ray_local  # noqa: F401
from worldmodel.data import write_transitions
from worldmodel.envs.collect import collect
from worldmodel.registry import ModelRegistry

TINY = ("--epochs", "2", "--space", "hidden=8,32", "--space", "layers=1", "--space", "ensemble_size=2",
        "--space", "lr=0.003", "--space", "reward_hidden=16", "--space", "reward_layers=1")


def test_tune_prints_one_json_object_and_registers_the_best(ray_local, tmp_path,  # noqa: F811
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    logs, registry, png = str(tmp_path / "logs"), str(tmp_path / "registry"), tmp_path / "sweep.png"
    write_transitions(logs, collect("Nav2D-v0", episodes=8, seed=2), "Nav2D-v0")
    code, out, err = run_json(capsys, "tune", "--data", logs, "--samples", "2", "--out", str(tmp_path / "runs"),
                              "--registry", registry, "--png", str(png), *TINY)
    assert code == 0, err
    assert out["command"] == "tune" and out["samples"] == 2 and len(out["trials"]) == 2 and out["stopped"] == []
    assert out["best"]["score"] == min(t["score"] for t in out["trials"])
    assert all(Path(t["artifact_dir"], "manifest.json").is_file() for t in out["trials"])
    assert out["registered"]["version"] == "1.0.0" and out["registered"]["stage"] == "candidate"
    assert ModelRegistry(registry).get("1.0.0").lineage["sweep"]["trial_id"] == out["best"]["trial_id"]
    assert png.is_file() and out["png"] == str(png)
    assert "trial 2/2: score" in err  # progress on stderr


@pytest.mark.parametrize("args, message", [
    (("--samples", "0"), "wm: error: --samples must be >= 1, got 0"),
    (("--samples", "1", "--space", "hiden=8"), "wm: error: search space: unknown setting(s) hiden"),
    (("--samples", "1", "--space", "hidden"), "wm: error: --space 'hidden': expected KEY=V1[,V2...]"),
    (("--samples", "1",), "wm: error: no trajectory logs under"),
    (("--samples", "1", "--grace-epochs", "0"), "wm: error: grace_epochs must be an integer >= 1, got 0"),
])
def test_bad_input_is_one_line_naming_it(tmp_path, capsys, args, message) -> None:
    code, out, err = run_json(capsys, "tune", "--data", str(tmp_path / "none"), *args)
    assert code == 1 and out["error"].startswith(message)
    assert err.strip().startswith(message) and len(err.strip().splitlines()) == 1  # no traceback
