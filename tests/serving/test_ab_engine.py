"""The engine with a live A/B test, without Ray: both arms planned in one cycle, at once; the candidate's
failure falls back to production; per-version totals published to the registry and compared there."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving import engine as engine_module
from serving.ab import LiveAB, assign
from serving.ab_gate import live_comparison
from serving.engine import PlanEngine
from serving.schema import PlanRequest
from tests.serving.test_engine import N_ACT, N_OBS, FakePlanner, FakeStore, Metrics, run
from tests.worldmodel.test_registry_ab import _model
from worldmodel.registry import ModelRegistry

AGENTS = [f"agent-{i}" for i in range(40)]


class _Overlap(FakePlanner):
    """A planner deployment whose calls take a moment; ``shared`` counts the calls in flight across arms."""

    def __init__(self, version: str, shared: dict[str, int]) -> None:
        super().__init__(version)
        self.shared, plan = shared, self._plan

        class _Plan:
            @staticmethod
            async def remote(*args: Any) -> Any:
                shared["now"] += 1
                shared["most"] = max(shared["most"], shared["now"])
                await asyncio.sleep(0.01)
                shared["now"] -= 1
                return plan(*args)

        self.plan = _Plan()


class _Failing(FakePlanner):
    def _plan(self, obs: np.ndarray, *_: Any) -> Any:
        raise RuntimeError("candidate replica died")


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    reg = ModelRegistry(str(tmp_path / "reg"))
    reg.register(_model(), stage="production")
    reg.register(_model())
    reg.start_ab("1.1.0", 0.5)
    return reg


def _steps(engine: PlanEngine, steps: int, reward: dict[str, float]) -> list[list[Any]]:
    out = []
    for t in range(steps):
        requests = [PlanRequest(agent_id=a, observation=[0.1 * (t + 1)] * N_OBS, t=t,
                                reward=None if t == 0 else reward[a], prev_action=None if t == 0 else [0.5] * N_ACT)
                    for a in AGENTS]
        out.append(run(engine, *requests))
    return out


def test_both_arms_are_planned_at_once_and_their_totals_compared(registry: ModelRegistry) -> None:
    test = registry.ab()
    assert test is not None
    shared = {"now": 0, "most": 0}
    production, candidate = _Overlap("1.0.0", shared), _Overlap("1.1.0", shared)
    live = LiveAB(candidate, registry.uri, poll_s=60.0, writer="engine-1")
    asyncio.run(live.refresh(registry))
    metrics = Metrics()
    engine = PlanEngine(production, FakeStore(), None, None, metrics, None, ab=live)
    arms = assign(test.id, AGENTS, [None] * len(AGENTS), test.share)
    assert 0 < arms.sum() < len(AGENTS)
    rewards = {a: (1.0 if c else -1.0) for a, c in zip(AGENTS, arms)}
    for answers in _steps(engine, 3, rewards):  # the same agents stay in their arm
        assert [a.model_version for a in answers] == ["1.1.0" if c else "1.0.0" for c in arms]
    assert production.calls == candidate.calls == 3 and shared["most"] == 2  # one call per arm, both in flight
    roles = {(tags["model_version"], tags["role"]) for v, tags in metrics.version.calls if v == 1}
    assert roles == {("1.0.0", "production"), ("1.1.0", "candidate")}
    asyncio.run(live.refresh(registry, publish=True))
    comparison = {m.spec.name: m for m in live_comparison(registry).metrics}
    reward = comparison["reward"]
    assert (reward.candidate.mean, reward.production.mean) == (1.0, -1.0)
    assert (reward.candidate.n, reward.production.n) == (int(arms.sum()), int((~arms).sum()))
    assert comparison["latency_ms"].candidate.n == 3 and comparison["prediction_mse"].candidate.mean > 0
    assert comparison["violations"].candidate.mean == 0.0


def test_a_failing_candidate_arm_is_planned_by_production(registry: ModelRegistry, monkeypatch) -> None:
    warned: list[str] = []
    monkeypatch.setattr(engine_module.logger, "warning", lambda message, *args: warned.append(message % args))
    live = LiveAB(_Failing("1.1.0"), registry.uri, poll_s=60.0, writer="engine-1")
    asyncio.run(live.refresh(registry))
    engine = PlanEngine(FakePlanner("1.0.0"), FakeStore(), None, None, Metrics(), None, ab=live)
    answers = run(engine, *[PlanRequest(agent_id=a, observation=[0.1] * N_OBS) for a in AGENTS])
    assert {a.model_version for a in answers} == {"1.0.0"} and len(answers) == len(AGENTS)
    assert len(warned) == 1 and "candidate replica died" in warned[0] and "planned by production" in warned[0]


def test_without_a_test_every_agent_is_production(registry: ModelRegistry) -> None:
    registry.end_ab()
    candidate = FakePlanner("1.1.0")
    live = LiveAB(candidate, registry.uri, poll_s=60.0, writer="engine-1")
    asyncio.run(live.refresh(registry))
    engine = PlanEngine(FakePlanner("1.0.0"), FakeStore(), None, None, Metrics(), None, ab=live)
    answers = run(engine, *[PlanRequest(agent_id=a, observation=[0.1] * N_OBS) for a in AGENTS])
    assert {a.model_version for a in answers} == {"1.0.0"} and candidate.calls == 0 and live.stats == {}
