"""The PETS loop at a tiny budget: it runs, counts env steps, logs its episodes, repeats itself, and its CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from cluster.cli import main
from planners import CEMConfig, PlanConfig
from planners.config import MBRLConfig
from planners.mbrl import MBRLResult, run_mbrl
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.data import read_transitions
from worldmodel.envs.collect import collect
from worldmodel.splits import CHUNK_STEPS, MIN_EPISODES, chunk_episodes, split_by_episode

from .survival_env import FULL_ID as SURVIVAL, MAX_STEPS

ENV = "Pendulum-v1"
TINY_PLAN = PlanConfig(horizon=5, samples=20, iterations=2)
TINY_MODEL = ModelConfig(ensemble_size=2, hidden=16, layers=1, reward_hidden=16, reward_layers=1)
TINY_TRAIN = TrainConfig(epochs=3, batch_size=64, device="cpu")
TINY_FLAGS = ["--horizon", "5", "--samples", "20", "--iterations", "2", "--hidden", "16", "--layers", "1",
              "--ensemble-size", "2", "--epochs", "3", "--batch-size", "64", "--device", "cpu"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; two threads on a busy 2-core machine are several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_run(seed: int, log_dir: Path | None = None) -> MBRLResult:
    cfg = MBRLConfig(ENV, 2, plan=TINY_PLAN, model=TINY_MODEL, train=TINY_TRAIN, seed=seed, target_return=0.0)
    return run_mbrl(cfg, log_dir=str(log_dir) if log_dir else None)


def test_one_random_one_planned_episode_is_logged_and_repeatable(tmp_path: Path) -> None:
    first = tiny_run(seed=3, log_dir=tmp_path / "logs")
    assert [r.kind for r in first.rows] == ["random", "planned"]
    assert [r.env_steps for r in first.rows] == [200, 400]
    assert first.rows[1].train_seconds > 0 and first.rows[1].plan_ms_mean > 0
    assert all(np.isfinite(first.returns)) and first.steps_to_target is None  # Pendulum's returns are < 0
    logged = read_transitions(str(tmp_path / "logs"))
    assert len(logged) == 400 and len(set(logged.eps_id.tolist())) == 2
    assert sorted(set(logged.model_version.tolist())) == ["", "mbrl-1"]
    # Same seed, same episodes: env resets, training and planning are all seeded.
    assert tiny_run(seed=3).returns == first.returns


def test_few_episodes_are_chunked_for_the_split_and_many_are_not() -> None:
    one = collect(ENV, 1, seed=0, num_envs=1)
    chunked = chunk_episodes(one)
    pieces = set(chunked.eps_id.tolist())
    assert len(pieces) == 200 // CHUNK_STEPS and len(chunked) == len(one)
    # Chunks are time-contiguous: each piece's steps form one unbroken run.
    for piece in pieces:
        t = np.sort(chunked.t[chunked.eps_id == piece])
        assert len(t) == CHUNK_STEPS and np.all(np.diff(t) == 1)
    split = split_by_episode(chunked, 0.1, 0.1, seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (160, 20, 20)
    assert len(set(chunk_episodes(one, length=50).eps_id.tolist())) == 4  # e.g. a GRU's sequence length
    many = collect(ENV, MIN_EPISODES, seed=0)
    assert chunk_episodes(many) is many


def test_config_rejects_a_loop_without_planned_or_random_episodes() -> None:
    with pytest.raises(ValueError, match="must exceed random_episodes"):
        MBRLConfig(ENV, 1, random_episodes=1)
    with pytest.raises(ValueError, match="random_episodes must be >= 1"):
        MBRLConfig(ENV, 3, random_episodes=0)
    with pytest.raises(ValueError, match="CEM settings were given"):
        MBRLConfig(ENV, 3, planner="mppi", cem=CEMConfig())
    with pytest.raises(ValueError, match="eval_episodes must be >= 0"):
        MBRLConfig(ENV, 3, eval_episodes=-1)
    with pytest.raises(ValueError, match="planner must be one of"):
        MBRLConfig(ENV, 3, planner="ilqr")


def test_cli_prints_one_json_object_and_writes_the_curve(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(["mbrl", "--env", ENV, "--episodes", "2", "--eval-episodes", "1", "--out", str(out),
                 "--target-return", "-200", *TINY_FLAGS, "--json"])
    stdout = capsys.readouterr().out
    assert code == 0
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one JSON line on stdout, got {stdout!r}"
    result = json.loads(lines[0])
    assert [row["env_steps"] for row in result["rows"]] == [200, 400]
    assert [(row["kind"], row["env_steps"]) for row in result["evals"]] == [("eval", 400)]
    assert result["eval_mean_return"] == result["evals"][0]["ret"]
    assert len(read_transitions(result["logs"])) == 400  # eval episodes are not learned from, nor logged
    assert result["target_return"] == -200 and Path(result["png"]).is_file()
    assert json.loads((out / "result.json").read_text())["returns"] == result["returns"]
    assert main(["mbrl", "--env", ENV, "--episodes", "2", "--out", str(out), "--json"]) == 1  # logs exist


def test_survival_task_with_short_episodes_and_a_constant_reward(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # One random episode of at most 12 steps: too few 20-step chunks to split, so shorter chunks.
    one = collect(SURVIVAL, 1, seed=0, num_envs=1)
    assert len(one) <= MAX_STEPS and len(set(chunk_episodes(one).eps_id.tolist())) >= 3
    # The reward is 1 on every row: its held-out R^2 is undefined (None), printed as "n/a".
    result = run_mbrl(MBRLConfig(SURVIVAL, 3, plan=TINY_PLAN, model=TINY_MODEL, train=TINY_TRAIN))
    assert [r.kind for r in result.rows] == ["random", "planned", "planned"]
    assert all(r.ret == r.steps for r in result.rows)  # reward 1 per step
    code = main(["mbrl", "--env", SURVIVAL, "--episodes", "3", "--random-episodes", "2", "--out",
                 str(tmp_path / "run"), *TINY_FLAGS])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err
    assert "episode 2 planned" in out

