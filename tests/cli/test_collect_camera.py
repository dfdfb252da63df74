"""`wm collect --env PixelNav2D-v0`: random play into image logs, a PNG of a few frames."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cluster.cli import main
from worldmodel.data import read_env_id
from worldmodel.data.images import read_image_transitions

from .helpers import run_json


def test_collect_writes_image_logs_and_a_png_of_frames(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    logs, png = tmp_path / "logs", tmp_path / "frames.png"
    code, out, _ = run_json(capsys, "collect", "--env", "PixelNav2D-v0", "--episodes", "2", "--out", str(logs),
                            "--png", str(png))
    assert code == 0 and out["episodes"] == 2 and out["image_shape"] == [64, 64, 3] and out["png"] == str(png)
    data = read_image_transitions(str(logs))
    assert len(data) == out["transitions"] and data.rows.obs_dim == 0 and read_env_id(str(logs)) == "PixelNav2D-v0"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (4 * 258 - 2, 2 * 258 - 2)  # 8 frames, 4 wide, enlarged 4x


def test_collect_passes_zones_to_the_camera_env(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def red_pixels(*zones: str) -> int:
        logs = tmp_path / f"logs{len(zones)}"
        code, _, _ = run_json(capsys, "collect", "--env", "PixelNav2D-v0", "--episodes", "1", *zones,
                              "--out", str(logs))
        assert code == 0
        frames = read_image_transitions(str(logs)).obs_image.astype(int)  # (B, H, W, 3)
        return int(((frames[..., 0] > 150) & (frames[..., 1] < 100)).sum())

    assert red_pixels("--no-fly-zones", "0") == 0 and red_pixels() > 0  # the env's default: 2 zones


def test_collect_proprio_and_occlusion(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    code, _, _ = run_json(capsys, "collect", "--env", "PixelNav2D-v0", "--episodes", "1", "--proprio",
                          "--occlusion", "1", "--out", str(logs))
    data = read_image_transitions(str(logs))
    assert code == 0 and data.rows.obs_dim == 2  # the velocity
    assert (data.obs_image == 0).all(axis=-1).any(axis=(1, 2)).all()  # every frame has its blanked patch


@pytest.mark.parametrize("args, message", [
    (["--env", "PixelNav2D-v0", "--gif", "x.gif"], "--gif is for Warehouse-v1 only"),
    (["--env", "Nav2D-v0", "--proprio"], "--proprio is for envs that observe camera frames only"),
    (["--env", "Warehouse-v1", "--occlusion", "0.5"], "--occlusion is for envs that observe camera frames only"),
    (["--env", "PixelNav2D-v0", "--occlusion", "2"], "occlusion_prob must be in [0, 1], got 2"),
    (["--env", "Nav2D-v0", "--png", "x.png"], "--png is for Warehouse-v1 only (or an env that observes camera frames)"),
])
def test_collect_camera_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                            args: list[str], message: str) -> None:
    assert main(["collect", *args, "--episodes", "1", "--out", str(tmp_path / "logs")]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists()
