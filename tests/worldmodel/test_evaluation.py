"""Offline evaluation on toy systems with known answers: exact models score 0, a constant offset c scores c at one
step and h*c at step h, calibrated intervals cover 68% at every horizon, fleet models one-step only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.data.batch import Transitions
from worldmodel.dynamics import Prediction
from worldmodel.envs import SpaceSpec
from worldmodel.evaluation import FLEET_ONE_STEP, EvalConfig, evaluate, rollout_windows
from worldmodel.model import WorldModel
from worldmodel.nn import expand_members
from worldmodel.recurrent import RecurrentDynamics

SPEC = SpaceSpec(obs_dim=2, act_dim=2, act_low=(-1.0, -1.0), act_high=(1.0, 1.0), env_id="Toy-v0")
EPISODES, STEPS, GAIN = 40, 12, 0.1


def toy_logs(noise: float = 0.0, episodes: int = EPISODES, seed: int = 0) -> Transitions:
    """s' = s + GAIN * a + noise * N(0, 1), reward -|s'|^2, for ``episodes`` episodes of STEPS steps."""
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (episodes, STEPS, 2))
    steps = GAIN * actions + noise * rng.standard_normal((episodes, STEPS, 2))
    states = rng.normal(size=(episodes, 1, 2)) + np.concatenate([np.zeros((episodes, 1, 2)), steps.cumsum(1)], 1)
    obs, new_obs = states[:, :-1].reshape(-1, 2), states[:, 1:].reshape(-1, 2)
    return Transitions.build(obs, actions.reshape(-1, 2), -(new_obs ** 2).sum(-1), new_obs,
                             np.zeros(len(obs), bool), np.zeros(len(obs), bool),
                             np.repeat([f"e{i}" for i in range(episodes)], STEPS), "a0",
                             np.tile(np.arange(STEPS), episodes))


class Shift(nn.Module):
    """s' = s + GAIN * a + offset, with a fixed predicted variance (0: deterministic)."""

    def __init__(self, offset: float = 0.0, var: float = 0.0) -> None:
        super().__init__()
        self.obs_dim, self.members, self.probabilistic = 2, 1, var > 0
        self.offset, self.var = offset, var
        self.register_buffer("var_scale", torch.ones(2))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> Prediction:
        mean = expand_members(obs, 1) + GAIN * action + self.offset  # (1, B, S)
        return Prediction(mean, torch.full_like(mean, self.var), self.var_scale)


class ShiftGRU(RecurrentDynamics):
    """The same toy as a recurrent model; its hidden state counts the steps since the window started."""

    def __init__(self, offset: float) -> None:
        super().__init__(2, 2, hidden=1, members=1)
        self.offset = offset

    def step_members(self, h: torch.Tensor, obs: torch.Tensor,
                     action: torch.Tensor) -> tuple[torch.Tensor, Prediction]:
        mean = expand_members(obs, 1) + GAIN * action + self.offset  # (1, B, S)
        return h + 1, Prediction(mean, torch.zeros_like(mean), self.var_scale)


class StillAgent(nn.Module):
    """A per-agent model predicting no change of the whole observation."""

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.obs_dim, self.members, self.probabilistic = obs_dim, 1, False
        self.register_buffer("anchor", torch.zeros(()))  # WorldModel finds its device by a buffer

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> Prediction:
        return Prediction(expand_members(obs, 1), torch.zeros_like(expand_members(obs, 1)))


class TrueReward(nn.Module):
    def forward(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> torch.Tensor:
        return -(new_obs ** 2).sum(-1)[None]  # (1, B)


def world(dynamics: nn.Module, kind: str = "ensemble") -> WorldModel:
    return WorldModel(SPEC, ModelConfig(dynamics=kind, ensemble_size=1), TrainConfig(seq_len=4), dynamics,
                      TrueReward(), None, version="1.0.0")


@pytest.mark.parametrize("dynamics, kind", [(Shift(), "mlp"), (ShiftGRU(0.0), "gru")])
def test_an_exact_model_scores_zero_at_every_horizon(dynamics: nn.Module, kind: str) -> None:
    scored = evaluate(world(dynamics, kind), toy_logs(), EvalConfig(horizon=5))
    assert scored.windows == EPISODES * (STEPS // 5) and len(scored.by_horizon) == 5
    for step in [scored.one_step, *scored.by_horizon]:
        assert step.mse == pytest.approx(0, abs=1e-10) and step.distance == pytest.approx(0, abs=1e-4)
        assert step.reward_mse == pytest.approx(0, abs=1e-8)
    assert scored.multi_step_skipped is None and scored.dims == [0, 1] and scored.rows == EPISODES * STEPS


@pytest.mark.parametrize("dynamics, kind", [(Shift(0.3), "mlp"), (ShiftGRU(0.3), "gru")])
def test_a_constant_offset_compounds_open_loop(dynamics: nn.Module, kind: str) -> None:
    scored = evaluate(world(dynamics, kind), toy_logs(), EvalConfig(horizon=4))
    assert scored.one_step.mse == pytest.approx(0.09, rel=1e-4)
    assert scored.one_step.mse_per_dim == pytest.approx([0.09, 0.09], rel=1e-4)
    assert scored.one_step.reward_mse == pytest.approx(0, abs=1e-8)  # logged transitions: the reward is exact
    for h, step in enumerate(scored.by_horizon, 1):  # open loop, the offset adds up: h * c off at step h
        assert step.mse == pytest.approx((0.3 * h) ** 2, rel=1e-4)
        assert step.distance == pytest.approx(0.3 * h * np.sqrt(2), rel=1e-4)
        assert step.rows == scored.windows and step.reward_mse > 0


def test_calibrated_intervals_cover_68_percent_at_every_horizon() -> None:
    # Windows that do not overlap hold independent noise: 2000 of them pin coverage to about +-0.01.
    noise, cfg = 0.05, EvalConfig(horizon=6, particles=128, seed=1)
    logs = toy_logs(noise, episodes=1000)
    calibrated = evaluate(world(Shift(var=noise ** 2)), logs, cfg)
    for step in [calibrated.one_step, *calibrated.by_horizon]:
        assert step.coverage_1sigma == pytest.approx(0.683, abs=0.03)
        assert step.coverage_2sigma == pytest.approx(0.954, abs=0.02)
    # The truth drifts as a random walk: error and the model's spread both grow like h.
    assert calibrated.by_horizon[-1].mse == pytest.approx(6 * noise ** 2, rel=0.1)
    nll = [s.nll for s in calibrated.by_horizon]
    assert nll == sorted(nll)
    overconfident = evaluate(world(Shift(var=(noise / 4) ** 2)), logs, cfg)
    assert overconfident.by_horizon[-1].coverage_1sigma < 0.3
    assert overconfident.by_horizon[-1].nll > calibrated.by_horizon[-1].nll
    # Seeded particles: the same scores again.
    assert evaluate(world(Shift(var=noise ** 2)), logs, cfg) == calibrated


def test_a_deterministic_model_has_no_calibration() -> None:
    scored = evaluate(world(Shift(0.1)), toy_logs(), EvalConfig(horizon=3))
    assert {scored.one_step.nll, scored.one_step.coverage_1sigma, scored.by_horizon[0].coverage_2sigma} == {None}


def test_windows_follow_runs_of_consecutive_steps() -> None:
    logs = toy_logs(episodes=2)
    index = rollout_windows(logs, 5, 5, 100)
    assert index.shape == (4, 5)
    assert (np.diff(logs.t[index], axis=1) == 1).all() and (logs.eps_id[index] == logs.eps_id[index[:, :1]]).all()
    gap = logs.select(logs.t != 6)  # a dropped row splits episode runs into 6 and 5 steps
    assert len(rollout_windows(gap, 5, 1, 100)) == 2 * (2 + 1)
    assert len(rollout_windows(logs, 2, 1, 7)) == 7
    with pytest.raises(ValueError, match="no episode in the logs has 13 consecutive steps \\(the longest has 12\\)"):
        rollout_windows(logs, 13, 1, 100)


def test_bad_input_names_the_value() -> None:
    with pytest.raises(ValueError, match="horizon must be an integer >= 1, got 0"):
        EvalConfig(horizon=0)
    wide = Transitions.build(np.zeros((4, 3)), np.zeros((4, 2)), np.zeros(4), np.zeros((4, 3)), np.zeros(4),
                             np.zeros(4), "e", "a", np.arange(4))
    with pytest.raises(ValueError, match=r"obs/action sizes \(3, 2\), the model \(2, 2\)"):
        evaluate(world(Shift()), wide)
    with pytest.raises(ValueError, match="no rows"):
        evaluate(world(Shift()), toy_logs().select(np.zeros(EPISODES * STEPS, bool)))


def test_a_fleet_model_is_scored_one_step_only() -> None:
    from worldmodel.envs import make_env, space_spec
    from worldmodel.envs.fleet_collect import collect_fleet
    from worldmodel.envs.warehouse import PHYS_DIMS, WAREHOUSE_ID
    from worldmodel.fleet_data import warehouse_layout
    from worldmodel.fleet_dynamics import FleetEnsemble

    class Still(FleetEnsemble):
        def forward(self, obs: torch.Tensor, action: torch.Tensor, neighbours: torch.Tensor) -> Prediction:
            mean = obs[None, :, PHYS_DIMS]
            return Prediction(mean, torch.zeros_like(mean))

    logs = collect_fleet(4, 1, seed=0, steps=10)
    spec = space_spec(make_env(WAREHOUSE_ID), WAREHOUSE_ID)
    model = WorldModel(spec, ModelConfig(dynamics="fleet"), TrainConfig(), Still(warehouse_layout(), 2, members=1,
                                                                                  hidden=8), TrueReward(), None)
    scored = evaluate(model, logs)
    change = (logs.new_obs - logs.obs)[:, PHYS_DIMS].astype(np.float64)
    assert scored.dims == [0, 1, 2, 3] and scored.one_step.mse == pytest.approx((change ** 2).mean(), rel=1e-5)
    assert scored.by_horizon == [] and scored.windows == 0 and scored.multi_step_skipped == FLEET_ONE_STEP
    # A per-agent model of the same floors rolls out, and is scored on the same dims: the two compare.
    agent = evaluate(WorldModel(spec, ModelConfig(), TrainConfig(), StillAgent(spec.obs_dim), TrueReward(), None), logs,
                     EvalConfig(horizon=5))
    assert agent.dims == scored.dims and agent.one_step.mse == pytest.approx(scored.one_step.mse, rel=1e-5)
    starts = rollout_windows(logs, 5, 5, 4096)[:, 0]
    assert agent.multi_step_skipped is None and agent.windows == len(starts)
    assert agent.by_horizon[0].mse == pytest.approx((change[starts] ** 2).mean(), rel=1e-5)
