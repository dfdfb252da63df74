"""Data-parallel latent training on Ray Train (``learners.latent_train``), reading the image logs through Ray Data:
two workers stay one model while each trains on its own episodes, and one worker is the in-process training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from cluster.cli import main
from cluster.commands.train import split_episodes
from learners.latent_train import train_latent_data_parallel
from tests.cli.helpers import run_json
from tests.ray_fixtures import ray_local  # noqa: F401 (fixture)
from worldmodel.data import require_log_files
from worldmodel.data.images import read_image_transitions
from worldmodel.latent import LatentConfig, LatentWorldModel
from worldmodel.latent_artifact import load_latent_model
from worldmodel.latent_training import LatentTrainConfig, episodes_from_logs, train_latent

pytestmark = pytest.mark.slow

TINY = LatentConfig(keypoints=2, latent=8, simnorm_group=4, members=2, hidden=16, depth=4)
STEPS = LatentTrainConfig(steps=4, batch=8, seed=3)


@pytest.fixture(scope="module")
def image_logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    logs = tmp_path_factory.mktemp("camera") / "logs"
    assert main(["collect", "--env", "PixelNav2D-v0", "--episodes", "6", "--out", str(logs), "--json"]) == 0
    return logs, require_log_files(str(logs))[2]


def test_one_worker_is_the_in_process_training(ray_local, image_logs) -> None:  # noqa: F811
    root, files = image_logs
    run = train_latent_data_parallel(str(root), files, TINY, STEPS, workers=1, held_share=0.2)
    train, held = split_episodes(episodes_from_logs(read_image_transitions(str(root))), 0.2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray worker runs (cluster.runtime.WORKER_ENV): sums in the same order
    try:
        torch.manual_seed(STEPS.seed)
        alone = LatentWorldModel(TINY)
        report = train_latent(alone, train, STEPS)
    finally:
        torch.set_num_threads(threads)
    assert run.report.workers == 1 and report.workers == 1 and len(run.held) == len(held) == 1
    torch.testing.assert_close(run.model.state_dict(), alone.state_dict())


def test_two_workers_train_one_model_each_on_its_own_episodes(capsys: pytest.CaptureFixture[str],
                                                              ray_local, image_logs, tmp_path: Path) -> None:  # noqa: F811
    """`wm train --workers 2`: 6 episodes, the last held out, the other 5 dealt whole, round-robin; each worker's
    batches differ, so without the gradients averaged the two copies would have drifted apart."""
    root, _ = image_logs
    overrides = {k: v for k, v in dataclasses.asdict(TINY).items() if k not in ("image_shape", "act_dim")}
    code, result, _ = run_json(capsys, "train", "--data", str(root), "--out", str(tmp_path / "m"), "--latent-config",
                               json.dumps(overrides), "--latent-steps", "2", "--workers", "2")
    assert code == 0 and result["kind"] == "latent", result
    metrics = result["metrics"]
    assert metrics["data_parallel"] == {"workers": 2, "episodes_per_worker": [3, 2], "workers_agree": True}
    assert metrics["episodes"] == 5 and metrics["held_out_episodes"] == 1 and metrics["steps"] == 2
    assert load_latent_model(tmp_path / "m").metrics == metrics
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "n"), "--workers", "0", "--json"]) != 0
    assert "--workers must be >= 1, got 0" in capsys.readouterr().err
