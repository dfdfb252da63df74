"""Data-parallel latent training on Ray Train (``learners.latent_train``), reading the image logs through Ray Data:
two workers stay one model while each trains on its own episodes, and `wm train --workers 1` is `wm train`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from cluster.cli import main
from learners.latent_train import train_latent_data_parallel
from tests.cli.helpers import run_json
from tests.ray_fixtures import ray_local  # noqa: F401 (fixture)
from worldmodel.data import require_log_files
from worldmodel.latent import LatentConfig
from worldmodel.latent_artifact import load_latent_model
from worldmodel.latent_training import LatentTrainConfig

pytestmark = pytest.mark.slow

TINY = LatentConfig(keypoints=2, latent=8, simnorm_group=4, members=2, hidden=16, depth=4)
OVERRIDES = json.dumps({k: v for k, v in dataclasses.asdict(TINY).items() if k not in ("image_shape", "act_dim")})


@pytest.fixture(scope="module")
def image_logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    logs = tmp_path_factory.mktemp("camera") / "logs"
    assert main(["collect", "--env", "PixelNav2D-v0", "--episodes", "6", "--out", str(logs), "--json"]) == 0
    return logs, require_log_files(str(logs))[2]


def test_two_workers_train_one_model_each_on_its_own_episodes(ray_local, image_logs) -> None:  # noqa: F811
    """6 episodes: the last held out, the other 5 dealt whole, round-robin. Each worker's batches differ, so without
    the gradients averaged (and the calibration's statistics combined) the two copies would differ."""
    root, files = image_logs
    run = train_latent_data_parallel(str(root), files, TINY, LatentTrainConfig(steps=3, batch=8, seed=3), workers=2,
                                     held_share=0.2)
    first, second = map(set, run.worker_episodes)  # what each worker read
    assert len(first) == 3 and len(second) == 2 and not first & second
    assert first | second == set(run.train_episodes) and run.held is not None and len(run.held) == 1
    assert run.workers_agree and run.report.workers == 2 and run.report.steps == 3


def test_wm_train_with_one_worker_is_wm_train(capsys: pytest.CaptureFixture[str], ray_local,  # noqa: F811
                                              image_logs, tmp_path: Path) -> None:
    root, _ = image_logs
    args = ["train", "--data", str(root), "--latent-config", OVERRIDES, "--latent-steps", "4", "--seed", "3"]
    code, result, _ = run_json(capsys, *args, "--out", str(tmp_path / "ray"), "--workers", "1")
    assert code == 0 and result["kind"] == "latent", result
    metrics = result["metrics"]
    assert metrics["data_parallel"] == {"workers": 1, "episodes_per_worker": [5], "workers_agree": True}
    assert metrics["episodes"] == 5 and metrics["held_out_episodes"] == 1 and metrics["steps"] == 4
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray worker runs (cluster.runtime.WORKER_ENV): sums in the same order
    try:
        code, alone, _ = run_json(capsys, *args, "--out", str(tmp_path / "alone"))
    finally:
        torch.set_num_threads(threads)
    assert code == 0 and alone["metrics"]["held_out"] == metrics["held_out"]  # the same episode held out
    torch.testing.assert_close(load_latent_model(tmp_path / "ray").model.state_dict(),
                               load_latent_model(tmp_path / "alone").model.state_dict())


@pytest.mark.parametrize("extra, message", [
    (["--workers", "0"], "--workers must be >= 1, got 0"),
    (["--address", "auto"], "--address is for data-parallel training (--workers N)"),
    (["--workers", "2", "--address", "10.0.0.1:6379"], "--address needs --storage"),
    (["--workers", "64"], "64 workers need a CPU each; the Ray cluster has 4"),
])
def test_data_parallel_options_are_checked_in_one_line(capsys: pytest.CaptureFixture[str], ray_local,  # noqa: F811
                                                       image_logs, tmp_path: Path, extra: list[str],
                                                       message: str) -> None:
    root, _ = image_logs
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "m"), *extra, "--json"]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
