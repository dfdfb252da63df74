"""The served latent planner: N camera agents per call, one encoder batch, actions in bounds, PlanBatch out."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from planners.base import Decision, Fallback
from planners.config import LATENT_PLAN, PlanConfig
from planners.latent_service import LatentPlanner
from planners.objectives import ACTION_HIGH, ACTION_LOW, ZONES
from planners.served import ServiceConfig
from planners.service import load_planner
from worldmodel.latent import LatentConfig, LatentWorldModel
from worldmodel.latent_artifact import LatentArtifact, save_latent_model

TINY = LatentConfig(image_shape=(32, 32, 3), latent=8, simnorm_group=4, members=3, hidden=16, depth=4)
PLAN = PlanConfig(horizon=5, samples=8, iterations=2)


def tiny_planner(plan: PlanConfig = PLAN) -> LatentPlanner:
    torch.manual_seed(0)
    return LatentPlanner(LatentArtifact(LatentWorldModel(TINY).eval(), version="0.3.0", env_id="PixelNav2D-v0"),
                         ServiceConfig(latent=plan))


def stacks(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, TINY.frames, 32, 32, 3), dtype=np.uint8)


def count_encodes(planner: LatentPlanner) -> list[int]:
    calls = [0]
    planner.latent.encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_camera_models_plan_with_their_own_settings_which_the_serve_flags_set() -> None:
    from cluster.commands.serve import service_settings

    default = LatentPlanner(LatentArtifact(LatentWorldModel(TINY).eval(), version="0.3.0", env_id="PixelNav2D-v0"))
    assert default.horizon == LATENT_PLAN.horizon and default.planner.cfg == LATENT_PLAN
    assert default.planner.shrink and default.planner.hold_plan  # late: fewer candidates, else the held plans
    assert ServiceConfig().plan != LATENT_PLAN  # vector models keep theirs
    flags = argparse.Namespace(planner="cem", horizon=7, samples=16, iterations=None, planner_opt=[],
                               reward_model=None, robots=None)
    cfg = ServiceConfig.from_dict(service_settings(flags))
    assert (cfg.latent.horizon, cfg.latent.samples, cfg.latent.iterations) == (7, 16, LATENT_PLAN.iterations)
    assert ServiceConfig.from_dict(cfg.to_dict()).latent == cfg.latent


def test_plans_every_agent_in_bounds_with_one_encoder_call() -> None:
    planner = tiny_planner()
    calls = count_encodes(planner)
    batch = planner.plan(stacks(6))
    assert calls[0] == 1  # six agents, one encoder batch
    assert batch.actions.shape == (6, 2) and (np.abs(batch.actions) <= 1).all()
    assert batch.warm_start.shape == (6, PLAN.horizon, 2) and batch.hidden is None
    assert batch.trajectory.shape == (6, PLAN.horizon + 1, TINY.moving)  # the moving part: the zone map stays put
    assert batch.model_version == "0.3.0" and batch.iterations == 2 and (batch.decision == Decision.PLANNED).all()


def test_stacks_of_another_depth_are_cut_or_padded_with_the_oldest_frame() -> None:
    planner = tiny_planner()
    full = stacks(2)
    with torch.no_grad():
        padded = planner.encode(np.repeat(full[:, :1], TINY.frames, axis=1))
        assert torch.allclose(planner.encode(full[:, :1]), padded)
        assert torch.allclose(planner.encode(np.concatenate([stacks(2, seed=5), full], 1)), planner.encode(full))


def test_action_bounds_and_warm_starts_apply_per_agent() -> None:
    planner = tiny_planner()
    low, high = np.array([[-0.1, -0.1], [-1, -1]], np.float32), np.array([[0.1, 0.1], [1, 1]], np.float32)
    warm = np.full((2, PLAN.horizon, 2), np.nan, np.float32)
    warm[1] = 0.5
    batch = planner.plan(stacks(2), warm_start=warm, constraints={ACTION_LOW: low, ACTION_HIGH: high})
    assert (np.abs(batch.actions[0]) <= 0.1 + 1e-6).all()


def test_disagreement_past_the_threshold_falls_back_to_zero() -> None:
    planner = tiny_planner(PlanConfig(horizon=5, samples=8, disagreement_threshold=0.0))
    planner.latent.step_std.fill_(1e-6)  # any spread of the members is huge in these units
    batch = planner.plan(stacks(3))
    assert (batch.fallback_reason == Fallback.UNCERTAINTY).all() and (batch.actions == 0).all()
    assert batch.reasons() == ["uncertainty"] * 3


@pytest.mark.parametrize("kwargs, message", [
    ({"obs": np.zeros((2, TINY.frames, 16, 16, 3), np.uint8)}, "obs must be (N, 3, 32, 32, 3) uint8 frame stacks"),
    ({"objectives": ["goal", "goal"]}, "unknown objective 'goal'"),
    ({"modes": ["policy", "plan"]}, "unknown mode 'policy'"),
    ({"constraints": {ZONES: np.zeros((2, 1, 3))}}, "exists for models with positions"),
    ({"sites": ["a", None]}, "site is for Warehouse-v1 models"),
])
def test_what_a_latent_model_does_not_serve_is_named(kwargs: dict, message: str) -> None:
    planner = tiny_planner()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        planner.plan(**{"obs": stacks(2), **kwargs})


def test_load_planner_serves_a_latent_artifact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_latent_model(LatentArtifact(LatentWorldModel(TINY), version="0.4.0", env_id="PixelNav2D-v0"), tmp_path / "m")
    planner = load_planner(tmp_path / "m", ServiceConfig(latent=PLAN))
    assert isinstance(planner, LatentPlanner) and planner.version == "0.4.0"
    info = planner.describe()
    assert info["image_shape"] == [32, 32, 3] and info["frames"] == TINY.frames and info["objectives"] == ["learned"]
    explanation = planner.explain(stacks(1)[0], proposals=np.zeros((1, 2), np.float32))
    assert explanation.action.shape == (2,)
    scored = planner.score(stacks(4), np.zeros((4, 2), np.float32), stacks(4, seed=1))
    assert scored["errors"].shape == (4,) and np.isfinite(scored["mean_error"])


def test_a_budget_the_encoder_used_up_falls_back_on_the_deadline() -> None:
    planner = tiny_planner()
    planner.plan(stacks(2))  # round times measured
    batch = planner.plan(stacks(2), budget_ms=0.001)
    assert (batch.fallback_reason == Fallback.DEADLINE).all() and batch.iterations == 0
    # late agents go on with their previous plans (a double integrator given zero coasts on), fresh ones with zero
    warm = np.full((2, planner.horizon, 2), 0.5, np.float32)
    warm[1] = np.nan
    late = planner.plan(stacks(2), warm_start=warm, budget_ms=0.001)
    assert batch.fallback_source == late.fallback_source == "plan"
    np.testing.assert_allclose(late.actions, [[0.5, 0.5], [0.0, 0.0]])


def test_an_explanations_fallback_is_the_plan_a_late_call_would_hold() -> None:
    planner = tiny_planner()
    held = np.tile(np.array([[0.5, -1.5]], np.float32), (planner.horizon, 1))  # (H, A), the second beyond the box
    explanation = planner.explain(stacks(1)[0], warm_start=held)
    assert explanation.fallback_action_by == "plan"
    np.testing.assert_allclose(explanation.fallback.actions, np.clip(held, -1, 1))
    fresh = planner.explain(stacks(1)[0])  # no plan kept: the zero action's rollout
    np.testing.assert_allclose(fresh.fallback.actions, np.zeros((planner.horizon, 2)))


def test_a_recurrent_model_carries_each_agents_predicted_latent_as_its_hidden_state() -> None:
    torch.manual_seed(0)
    cfg = LatentConfig(image_shape=(32, 32, 3), frames=2, latent=8, simnorm_group=4, members=3, hidden=16, depth=4,
                       recurrent=True)
    model = LatentWorldModel(cfg).eval()
    with torch.no_grad():
        model.gain_logit.fill_(-30.0)  # a gain of 0: the latent is the prediction alone, whatever the frames say
    planner = LatentPlanner(LatentArtifact(model, version="0.3.0", env_id="PixelNav2D-v0"), ServiceConfig(latent=PLAN))
    assert planner.recurrent and planner.hidden_size == cfg.state_dim
    first = planner.plan(stacks(3))
    with torch.no_grad():  # the hidden state: the members' mean next latent under the action served
        z = planner.encode(stacks(3))
        expected = model.next(z, torch.as_tensor(first.actions)).mean(0).numpy()
    assert first.hidden.shape == (3, cfg.state_dim) and np.allclose(first.hidden, expected, atol=1e-5)
    # The next request's frames correct it (here not at all): agent 0 has none (NaN), a fresh start from its frames.
    hidden = first.hidden.copy()
    hidden[0] = np.nan
    second = planner.plan(stacks(3, seed=9), hidden=hidden)
    m = cfg.moving  # trajectories hold the moving part
    assert np.allclose(second.trajectory[1:, 0], first.hidden[1:, :m], atol=1e-5)
    with torch.no_grad():
        assert np.allclose(second.trajectory[0, 0], planner.encode(stacks(3, seed=9))[0, :m].numpy(), atol=1e-5)
    # a hidden state of another shape (another model's) is no start: the frames alone
    assert np.allclose(planner.plan(stacks(3, seed=9), hidden=np.zeros((3, 4), np.float32)).trajectory[:, 0],
                       planner.plan(stacks(3, seed=9)).trajectory[:, 0], atol=1e-5)
