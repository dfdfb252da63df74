"""ImaginedEnv on world models whose dynamics are known functions (Nav2D's physics; a toy 'pendulum')."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers.vector import DictInfoToList
from torch import nn

from planners.evaluate import build_objective
from planners.imagined_env import ZONE_RADIUS, ImaginedEnv
from planners.objectives import GOAL, ZONES, LearnedReward, Objective
from planners.policy import PolicyNet
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.dynamics import Prediction
from worldmodel.envs import SpaceSpec
from worldmodel.envs.nav2d import DT
from worldmodel.model import WorldModel
from worldmodel.nn import expand_members
from worldmodel.reward import RewardModel

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NAV_SPEC = SpaceSpec(6, 2, (-1.0, -1.0), (1.0, 1.0), "Nav2D-v0")
PENDULUM_SPEC = SpaceSpec(3, 1, (-2.0,), (2.0,), "Pendulum-v1")


class NavPhysics(nn.Module):
    """Nav2D's noiseless dynamics as E members; member e scales the acceleration by 1 + e * spread."""

    probabilistic = True

    def __init__(self, members: int = 3, spread: float = 0.0, var: float = 0.0) -> None:
        super().__init__()
        self.members, self.obs_dim, self.act_dim, self.var = members, 6, 2, var
        self.register_buffer("gain", 1 + spread * torch.arange(members, dtype=torch.float32))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> Prediction:
        x, a = expand_members(obs, self.members), expand_members(action, self.members)
        v = (x[..., 2:4] + a * DT * self.gain[:, None, None]).clamp(-3, 3)
        mean = torch.cat([x[..., :2] + v * DT, v, x[..., 4:]], -1)
        return Prediction(mean, torch.full_like(mean, self.var))


class ToyLinear(nn.Module):
    """x' = x + 0.1 * a on every dimension of a 3-D state (a 'pendulum' with a known model)."""

    probabilistic, members, obs_dim, act_dim = True, 2, 3, 1

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("step", torch.tensor(0.1))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> Prediction:
        mean = expand_members(obs, self.members) + self.step * expand_members(action, self.members)
        return Prediction(mean, torch.zeros_like(mean))


class PastOne(nn.Module):
    """A termination model that is sure once the first state dimension passes 1: (E, B) probabilities."""

    def forward(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> torch.Tensor:
        return (new_obs[..., 0] > 1).float().expand(2, -1)


def nav_model(device: str = "cpu", **physics) -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(NAV_SPEC, ModelConfig(), TrainConfig(), NavPhysics(**physics), RewardModel(6, 2, 16, 1),
                      None).to(device)


def nav_starts(n: int = 64, seed: int = 0) -> np.ndarray:
    starts = np.zeros((n, 6), np.float32)
    starts[:, :2] = np.random.default_rng(seed).uniform(-5, 5, (n, 2))
    return starts


def nav_env(num_envs: int = 16, device: str = "cpu", model: WorldModel | None = None, **kwargs) -> ImaginedEnv:
    return ImaginedEnv(model or nav_model(device), nav_starts(), num_envs, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_spaces_shapes_and_dtypes(device):
    env = nav_env(8, device)
    assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, infos = env.reset(seed=3)
    assert obs.shape == (8, 18) and obs.dtype == np.float32 and env.observation_space.contains(obs)
    assert set(infos) == {"is_success", "_is_success", "violation", "_violation"}
    obs, rew, term, trunc, infos = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    assert rew.shape == term.shape == trunc.shape == (8,)
    assert rew.dtype == np.float32 and term.dtype == trunc.dtype == infos["violation"].dtype == np.bool_
    policy = PolicyNet(6, 2, NAV_SPEC.act_low, NAV_SPEC.act_high, zones=env.zoned).to(device)
    assert policy.feature_dim == env.single_observation_space.shape[0]
    np.testing.assert_array_equal(obs, policy.features(env.states, env.params).cpu().numpy())


def test_zones_drawn_within_counts_radii_and_clear_of_start_and_goal():
    env = nav_env(512, zones=(1, 3))
    env.reset(seed=0)
    state, zones = env.states, env.params[ZONES]  # (N, S), (N, 3, 3)
    pos, goal, radius = state[:, :2], state[:, 4:6], zones[..., 2]
    assert torch.equal(goal, env.params[GOAL]) and (goal.abs() <= 5).all()
    assert (torch.linalg.vector_norm(goal - pos, dim=-1) >= 2).all()
    count = (radius > 0).sum(1)
    assert count.min() >= 1 and count.max() <= 3 and (count == 3).float().mean() > 0.25
    real = radius > 0
    assert ((radius[real] >= ZONE_RADIUS[0]) & (radius[real] <= ZONE_RADIUS[1])).all()
    assert not zones[~real].any()  # padding slots are all zeros
    clear = radius + env.goal_radius
    for point in (pos, goal):
        dist = torch.linalg.vector_norm(zones[..., :2] - point[:, None], dim=-1)
        assert (dist[real] >= clear[real] - 1e-5).all()
    # The first zone lies on the start-goal segment, 30-70% of the way along.
    along = ((zones[:, 0, :2] - pos) * (goal - pos)).sum(-1) / (goal - pos).square().sum(-1)
    off = zones[:, 0, :2] - (pos + along[:, None] * (goal - pos))
    assert ((along >= 0.3 - 1e-5) & (along <= 0.7 + 1e-5)).all() and off.abs().max() < 1e-4


def test_rewards_equal_the_planners_objective_on_the_same_transition():
    env = nav_env(64, zones=(2, 4))
    env.reset(seed=1)
    objective = build_objective(env.model, "goal", zones=True)
    actions = np.random.default_rng(0).uniform(-1, 1, (64, 2)).astype(np.float32)
    for _ in range(3):
        before, params = env.states, env.params
        _, rew, term, trunc, infos = env.step(actions)
        assert not (term | trunc).any()
        after = env.states
        act = torch.as_tensor(actions)
        expected = objective(before[None, :, None], act[None, :, None], after[None, :, None], params)[0, :, 0]
        np.testing.assert_allclose(rew, expected.numpy(), rtol=1e-6)
        torch.testing.assert_close(after, env.model.dynamics(before, act).mean[0])  # members agree here
        inside = (torch.linalg.vector_norm(after[:, None, :2] - params[ZONES][..., :2], dim=-1)
                  < params[ZONES][..., 2]).any(1)
        np.testing.assert_array_equal(infos["violation"], inside.numpy())


def test_each_episode_follows_one_member():
    env = nav_env(32, model=nav_model(members=4, spread=0.5))
    env.reset(seed=2)
    actions = np.ones((32, 2), np.float32)
    members = []
    for _ in range(3):
        before = env.states
        env.step(actions)
        predictions = env.model.dynamics(before, torch.as_tensor(actions)).mean  # (E, N, S)
        match = (predictions - env.states).abs().amax(-1) < 1e-6  # (E, N)
        assert (match.sum(0) == 1).all()
        members.append(match.int().argmax(0))
    assert torch.equal(members[0], members[1]) and torch.equal(members[1], members[2])
    assert len(members[0].unique()) > 1


def test_the_uncertainty_penalty_takes_the_members_disagreement_off_the_reward():
    model = nav_model(members=4, spread=0.5)
    plain, penalised = (nav_env(32, model=model, uncertainty_penalty=p) for p in (0.0, 3.0))
    actions = np.ones((32, 2), np.float32)
    for env in (plain, penalised):
        env.reset(seed=2)
    before = penalised.states
    rewards = [env.step(actions)[1] for env in (plain, penalised)]
    means = model.dynamics(before, torch.as_tensor(actions)).mean  # (E, N, S): the members' accelerations differ
    disagreement = torch.linalg.vector_norm(means.std(0, unbiased=False), dim=-1).numpy()
    assert (disagreement > 0).all()
    np.testing.assert_allclose(rewards[1], rewards[0] - 3.0 * disagreement, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="uncertainty_penalty must be >= 0, got -1"):
        nav_env(4, uncertainty_penalty=-1.0)


def drive_to_goal(env: ImaginedEnv) -> np.ndarray:
    """A PD controller towards each env's goal: (N, A)."""
    state = env.states
    return (2.0 * (state[:, 4:6] - state[:, :2]) - 2.5 * state[:, 2:4]).clamp(-1, 1).numpy()


def test_termination_at_the_goal():
    env = nav_env(32, zones=(0, 0))
    env.reset(seed=0)
    ended = np.zeros(32, bool)
    for _ in range(200):
        _, rew, term, trunc, infos = env.step(drive_to_goal(env))
        if term.any():
            dist = torch.linalg.vector_norm(env.states[:, :2] - env.params[GOAL], dim=-1).numpy()
            assert (dist[term] <= env.goal_radius).all() and infos["is_success"][term].all()
        assert not (infos["is_success"] & ~term).any()
        ended |= term
    assert ended.all()


def test_truncation_at_the_horizon_then_next_step_autoreset():
    env = nav_env(8, zones=(0, 0), horizon=5)
    env.reset(seed=0)
    zero = np.zeros((8, 2), np.float32)
    for t in range(1, 6):
        obs, rew, term, trunc, _ = env.step(zero)
        assert not term.any() and trunc.all() == (t == 5) and trunc.any() == (t == 5)
    last = env.states
    obs, rew, term, trunc, infos = env.step(np.ones((8, 2), np.float32))  # ignored: every env resets
    assert not (term | trunc).any() and not rew.any() and not infos["is_success"].any()
    first = env.states
    assert not torch.equal(first, last) and not first[:, 2:4].any()  # fresh starts (logged, at rest)
    np.testing.assert_array_equal(obs, env._observations())
    obs, rew, term, trunc, _ = env.step(zero)  # a normal step of the new episodes
    assert rew.all() and not (term | trunc).any()


def test_seeding_is_reproducible():
    def rollout(seed: int) -> list[np.ndarray]:
        env = nav_env(8, model=nav_model(spread=0.3, var=0.01), horizon=4)
        out = [env.reset(seed=seed)[0]]
        for _ in range(10):
            out.append(env.step(np.full((8, 2), 0.5, np.float32))[0])
        return out

    same, other = rollout(7), rollout(8)
    for a, b in zip(same, rollout(7)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(same[-1], other[-1])


def test_learned_reward_and_termination_without_zones():
    torch.manual_seed(0)
    model = WorldModel(PENDULUM_SPEC, ModelConfig(), TrainConfig(), ToyLinear(), RewardModel(3, 1, 16, 1),
                       PastOne())  # type: ignore[arg-type]
    starts = np.array([[0.5, 0.0, 0.0], [0.85, 0.0, 0.0]], np.float32)
    env = ImaginedEnv(model, starts, 4, seed=0)
    assert env.objective_name == "learned" and not env.zoned
    obs, _ = env.reset()
    assert obs.shape == (4, 3) and env.params == {}
    np.testing.assert_array_equal(obs, env.states.numpy())
    before, actions = env.states, np.full((4, 1), 2.0, np.float32)
    _, rew, term, trunc, infos = env.step(np.full((4, 1), 5.0, np.float32))  # clipped to 2: x += 0.2
    after = env.states
    torch.testing.assert_close(after, before + 0.2)
    with torch.no_grad():
        expected = Objective([LearnedReward(model.reward)])(
            before[None, :, None], torch.as_tensor(actions)[None, :, None], after[None, :, None], {})[0, :, 0]
    np.testing.assert_allclose(rew, expected.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(term, after[:, 0].numpy() > 1)
    assert not infos["is_success"].any() and not infos["violation"].any()
    with pytest.raises(ValueError, match="Nav2D-v0 only"):
        ImaginedEnv(model, starts, 4, zones=(0, 1))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="starts must be"):
        ImaginedEnv(nav_model(), np.zeros((3, 5)), 4)
    with pytest.raises(ValueError, match="num_envs"):
        ImaginedEnv(nav_model(), nav_starts(), 0)
    env = nav_env(4)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros((4, 2)))
    env.reset()
    with pytest.raises(ValueError, match=r"\(N, A\) = \(4, 2\)"):
        env.step(np.zeros((3, 2)))


def test_feature_stats_fit_the_observations():
    env = nav_env(4, zones=(1, 4))
    mean, std = env.feature_stats(2048)
    assert mean.shape == std.shape == (18,)
    assert (std[:2] > 2).all()  # logged starts spread over the spawn box
    # The nearest zone (>= 1 per episode) has a radius drawn uniformly from ZONE_RADIUS: std 1/sqrt(12).
    assert ZONE_RADIUS[0] < mean[8] < ZONE_RADIUS[1] and abs(float(std[8]) - 12 ** -0.5) < 0.08


def test_vector_entry_point_as_rllib_makes_it():
    """RLlib's env runner registers a creator as ``vector_entry_point`` and wraps it in DictInfoToList."""
    env_id = "fleetwm-test-imagined-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=None, vector_entry_point=lambda num_envs: nav_env(num_envs))
    env = DictInfoToList(gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point"))
    obs, infos = env.reset(seed=0)
    assert obs.shape == (3, 18) and len(infos) == 3
    obs, rew, term, trunc, infos = env.step(env.action_space.sample())
    assert infos[0].keys() == {"is_success", "violation"}
