"""`wm collect --env Warehouse-v1`: floor episodes of every robot into the logs, the first one drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cluster.cli import main
from worldmodel.data import read_env_id, read_transitions

from .helpers import run_json


def test_collect_warehouse_logs_every_robot_with_its_scene(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    logs, png, gif = tmp_path / "logs", tmp_path / "floor.png", tmp_path / "floor.gif"
    code, out, _ = run_json(capsys, "collect", "--env", "Warehouse-v1", "--robots", "4", "--episodes", "2",
                            "--steps", "30", "--out", str(logs), "--png", str(png), "--gif", str(gif))
    assert code == 0 and out["robots"] == 4 and out["episodes"] == 2 and out["policy"] == "task"
    assert out["transitions"] == 2 * 4 * 30 and out["png"] == str(png) and out["gif"] == str(gif)
    with Image.open(png) as image:
        assert image.format == "PNG"
    with Image.open(gif) as image:
        assert image.n_frames == 31  # the start and every tick
    data = read_transitions(str(logs))
    assert read_env_id(str(logs)) == "Warehouse-v1" and data.obs_dim == 28
    assert set(data.scene) == {"warehouse-0-0", "warehouse-0-1"}
    assert set(data.agent_id) == {f"robot-{i:04d}" for i in range(4)}
    assert np.all(data.eps_id == data.scene + "/" + data.agent_id)


@pytest.mark.parametrize("args, message", [
    (["--env", "Nav2D-v0", "--robots", "4"], "--robots is for Warehouse-v1 only"),
    (["--env", "Nav2D-v0", "--png", "x.png"], "--png is for Warehouse-v1 only"),
    (["--env", "Warehouse-v1", "--no-fly-zones", "2"], "--no-fly-zones is for Nav2D only"),
    (["--env", "Warehouse-v1", "--robots", "0"], "robots must be >= 1"),
    (["--env", "Warehouse-v1", "--steps", "0"], "steps must be in 1..600"),
    (["--env", "Warehouse-v1", "--policy", "genius"], "unknown policy 'genius'"),
])
def test_collect_warehouse_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               args: list[str], message: str) -> None:
    assert main(["collect", *args, "--episodes", "1", "--out", str(tmp_path / "logs")]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists()
