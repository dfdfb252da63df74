"""`wm models ab|compare|promote|rollback` on a registry with published live A/B totals: the gate refuses a
worse candidate and one with too little data (one line naming the metric and both intervals), --force promotes
and the history records the override, and rollback undoes it in one command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cluster.cli import main
from serving.ab import write_live
from serving.ab_stats import VersionStats
from tests.worldmodel.test_registry_ab import _model
from worldmodel.registry import ModelRegistry

from .helpers import run_json


def _totals(agents: int, reward: float, seed: int) -> dict:
    """``agents`` agents of 10 steps each, rewards around ``reward``; 30 planner calls of 15 to 25 ms."""
    rng = np.random.default_rng(seed)
    stats = VersionStats()
    ids = [f"agent-{seed}-{i}" for i in range(agents) for _ in range(10)]
    stats.add(ids, "steps", np.ones(len(ids)))
    stats.add(ids, "reward_steps", np.ones(len(ids)))
    stats.add(ids, "reward_sum", reward + 0.1 * rng.standard_normal(len(ids)))
    for ms in np.linspace(15.0, 25.0, 30):
        stats.add_call(float(ms))
    return stats.to_dict()


@pytest.fixture
def registry(tmp_path: Path) -> str:
    reg = ModelRegistry(str(tmp_path / "reg"))
    reg.register(_model(), stage="production")
    reg.register(_model())
    return reg.uri


def _publish(uri: str, candidate: dict, production: dict) -> None:
    reg = ModelRegistry(uri)
    test = reg.ab()
    assert test is not None
    write_live(reg, test.id, "engine-a", {"versions": {"1.1.0": candidate}})
    write_live(reg, test.id, "engine-b", {"versions": {"1.0.0": production}})


def test_ab_start_and_end(capsys: pytest.CaptureFixture[str], registry: str) -> None:
    code, out, _ = run_json(capsys, "models", "ab", "1.1.0", "--share", "0.1", "--registry", registry)
    assert code == 0 and out["test"]["version"] == "1.1.0" and out["test"]["share"] == 0.1
    code, out, _ = run_json(capsys, "models", "list", "--registry", registry)
    assert code == 0 and out["ab"]["version"] == "1.1.0"
    code, out, _ = run_json(capsys, "models", "compare", "--registry", registry)
    assert code == 0 and out["status"] == "insufficient" and out["writers"] == 0
    assert [m["metric"] for m in out["metrics"]] == ["reward", "success", "violations", "latency_ms", "prediction_mse"]
    code, out, _ = run_json(capsys, "models", "ab", "--end", "--registry", registry)
    assert code == 0 and out["ended"]["version"] == "1.1.0" and out["test"] is None
    code, out, _ = run_json(capsys, "models", "compare", "--registry", registry)
    assert code == 0 and out["status"] == "no_test"
    for bad in (["1.1.0"], ["--end", "1.1.0"], ["--share", "0.1"]):
        code, out, err = run_json(capsys, "models", "ab", *bad, "--registry", registry)
        assert code != 0 and "VERSION --share" in out["error"] and len(err.strip().splitlines()) == 1
    code, out, _ = run_json(capsys, "models", "ab", "1.1.0", "--share", "1.5", "--registry", registry)
    assert code == 1 and "share must be a fraction in (0, 1)" in out["error"]


def test_gate_refuses_worse_then_force_is_recorded_and_rollback_undoes_it(capsys: pytest.CaptureFixture[str],
                                                                          registry: str) -> None:
    assert main(["models", "ab", "1.1.0", "--share", "0.2", "--registry", registry]) == 0
    _publish(registry, _totals(30, -2.0, 1), _totals(120, -1.0, 2))
    assert main(["models", "compare", "--registry", registry]) == 0
    table = capsys.readouterr().out
    assert "reward per step" in table and "worse" in table
    code, out, err = run_json(capsys, "models", "promote", "1.1.0", "--registry", registry)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "refusing to promote 1.1.0" in out["error"] and "reward per step (per-agent mean) is worse" in out["error"]
    assert "candidate -2" in out["error"] and "production 1.0.0 -1" in out["error"]  # both intervals named
    code, out, _ = run_json(capsys, "models", "promote", "1.1.0", "--force", "--registry", registry)
    assert code == 0 and out["forced"] and "reward per step" in out["overrode"]
    reg = ModelRegistry(registry)
    promoted = [h for h in reg.history() if h["action"] == "promote"][-1]
    assert promoted["forced"] and promoted["reason"].startswith("forced over live A/B test")
    assert reg.ab() is None and reg.production().version == "1.1.0"  # type: ignore[union-attr]
    code, out, _ = run_json(capsys, "models", "rollback", "--registry", registry)
    assert code == 0 and (out["version"], out["archived"]) == ("1.0.0", "1.1.0")


def test_gate_refuses_too_little_data_and_passes_an_equal_candidate(capsys: pytest.CaptureFixture[str],
                                                                     registry: str) -> None:
    assert main(["models", "ab", "1.1.0", "--share", "0.1", "--registry", registry]) == 0
    _publish(registry, _totals(5, -1.0, 1), _totals(120, -1.0, 2))
    code, out, _ = run_json(capsys, "models", "promote", "1.1.0", "--registry", registry)
    assert code == 1 and "too little live data" in out["error"] and "n=5 in the candidate arm" in out["error"]
    _publish(registry, _totals(40, -1.0, 3), _totals(120, -1.0, 2))
    code, out, _ = run_json(capsys, "models", "compare", "--registry", registry)
    verdicts = {m["metric"]: m["verdict"] for m in out["metrics"]}
    assert out["status"] == "ok" and verdicts["reward"] == "same" and verdicts["success"] == "insufficient"
    code, out, _ = run_json(capsys, "models", "promote", "1.1.0", "--registry", registry)
    assert code == 0 and not out["forced"] and out["overrode"] is None
