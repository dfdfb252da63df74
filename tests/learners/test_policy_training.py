"""PPO inside a world model (RLlib): settings, the RLModule, the trainer, its export and the learner hook.

Budgets are tiny (a few iterations of 32-64 imagined rollouts on a barely trained model): these
tests check wiring, shapes, lineage and errors; how well the defaults train is measured in the report.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

from learners.learner import Learner
from learners.policy_module import PolicyModule
from learners.policy_env import EnvCreator, PPOReward, SupportClamp, on_support
from learners.policy_training import initial_actor, ppo_config, read_starts, train_policy
from learners.settings import POLICY_PRESETS, POLICY_ZONES_MAX, PolicySettings, policy_settings
from planners.objectives import GOAL, ZONES
from planners.policy import POLICY_ZONES
from planners.policy_artifact import load_policy, policy_info
from tests.ray_fixtures import ray_local  # noqa: F401
from worldmodel.artifact import save_model
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.data import write_transitions
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.collect import collect
from worldmodel.registry import ModelRegistry
from worldmodel.training import train_world_model

TINY_MODEL = ModelConfig(ensemble_size=2, hidden=16, layers=1, reward_hidden=16, reward_layers=1)
TINY_TRAIN = TrainConfig(epochs=2, patience=2, seed=0)
TINY = PolicySettings(iterations=2, num_envs=32, steps_per_env=8, horizon=20, minibatch=128, epochs=2,
                      eval_episodes=6, hidden=16)


@pytest.fixture(scope="module")
def nav(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Nav2D logs and a tiny model trained on them (its directory is copied per test that writes a policy)."""
    root = tmp_path_factory.mktemp("nav")
    data = collect("Nav2D-v0", episodes=6, seed=0)
    write_transitions(str(root / "logs"), data, "Nav2D-v0")
    model = train_world_model(data, space_spec(make_env("Nav2D-v0"), "Nav2D-v0"), TINY_MODEL, TINY_TRAIN)
    save_model(model, root / "model")
    return {"logs": str(root / "logs"), "model": str(root / "model")}


def test_settings_validate_and_presets_differ_only_where_tuned() -> None:
    assert POLICY_ZONES_MAX == POLICY_ZONES
    with pytest.raises(ValueError, match="num_envs must be an int >= 1, got 0"):
        PolicySettings(num_envs=0)
    with pytest.raises(ValueError, match="zones must be"):
        PolicySettings(zones=(2, 5))
    with pytest.raises(ValueError, match="unknown field"):
        policy_settings("Nav2D-v0", iterationz=3)
    assert policy_settings("CartPole-v9") == PolicySettings()
    assert policy_settings("Nav2D-v0", iterations=3, seed=None).iterations == 3  # None: keep the preset's
    assert set(POLICY_PRESETS) >= {"Nav2D-v0", "Pendulum-v1"}


class _FixedEnv(gym.vector.VectorEnv):
    """Two envs at known positions, goal at the origin; a fixed reward per step and an end at step 2."""

    def __init__(self, reward: np.ndarray) -> None:
        self.num_envs, self.reward, self.t = 2, reward, 0
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (6,), np.float32)
        self.single_action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, **kwargs):
        self.t = 0
        return np.zeros((2, 6), np.float32), {}

    def step(self, actions):
        self.t += 1
        obs = np.array([[3, 4, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]], np.float32)  # 5 and 1 from the goal
        ended = np.full(2, self.t == 2)
        return obs, self.reward.copy(), ended, np.zeros(2, bool), {}


def test_ppo_reward_weighs_the_zone_cost_and_keeps_autoreset_steps_at_zero() -> None:
    env = PPOReward(_FixedEnv(np.array([-5.0, -101.0], np.float32)), scale=0.5, zone_weight=0.1, nav=True)
    env.reset()
    _, reward, *_ = env.step(np.zeros((2, 2)))
    # goal terms -5 and -1; zone costs 0 and -100 weighed by 0.1; then scaled by 0.5
    np.testing.assert_allclose(reward, [-2.5, 0.5 * (-1 - 10)])
    env.step(np.zeros((2, 2)))  # both episodes end here
    _, reward, *_ = env.step(np.zeros((2, 2)))  # the autoreset step
    np.testing.assert_allclose(reward, [0.0, 0.0])
    plain = PPOReward(_FixedEnv(np.array([-5.0, -101.0], np.float32)), scale=0.5, zone_weight=0.1, nav=False)
    plain.reset()
    np.testing.assert_allclose(plain.step(np.zeros((2, 2)))[1], [-2.5, -50.5])


def test_imagined_states_stay_on_the_logged_support(nav) -> None:
    from worldmodel.artifact import load_model

    model = load_model(nav["model"])
    starts = read_starts(nav["logs"], "Nav2D-v0", 0)
    clamped = on_support(model, starts)
    assert isinstance(clamped.dynamics, SupportClamp) and clamped.reward is model.reward
    far = torch.tensor([[40.0, -40.0, 9.0, -9.0, 1.0, 1.0]])
    mean = clamped.dynamics(far, torch.ones(1, 2)).mean  # (E, 1, S)
    span = starts.max(0) - starts.min(0)
    assert (mean <= torch.as_tensor(starts.max(0) + 0.1 * span) + 1e-5).all()
    assert (mean >= torch.as_tensor(starts.min(0) - 0.1 * span) - 1e-5).all()


def test_the_module_is_the_policy_net_plus_a_gaussian_and_a_critic(nav) -> None:
    from worldmodel.artifact import load_model

    model = load_model(nav["model"])
    actor = initial_actor(model, read_starts(nav["logs"], "Nav2D-v0", 0), TINY)
    spec = ppo_config(EnvCreator(nav["model"], np.zeros((1, 6), np.float32), TINY), actor, TINY).rl_module_spec
    f = actor.feature_dim
    space = gym.spaces.Box(-np.inf, np.inf, (f,), np.float32)
    module = PolicyModule(observation_space=space, action_space=gym.spaces.Box(-1, 1, (2,), np.float32),
                          model_config=spec.model_config)
    module.actor.load_state_dict(actor.state_dict())
    features = torch.randn(5, f)
    out = module.forward_inference({Columns.OBS: features})[Columns.ACTION_DIST_INPUTS]  # (5, 2A)
    assert out.shape == (5, 4)
    torch.testing.assert_close(out[:, :2], actor(features))  # the mean IS the PolicyNet's action
    torch.testing.assert_close(out[:, 2:], torch.full((5, 2), TINY.log_std_init))
    assert module.compute_values({Columns.OBS: features}).shape == (5,)
    runner_copy = PolicyModule(observation_space=space, action_space=module.action_space, inference_only=True,
                               model_config=spec.model_config)
    assert not hasattr(runner_copy, "critic")  # env runners carry no critic
    with pytest.raises(ValueError, match="features"):
        PolicyModule(observation_space=gym.spaces.Box(-1, 1, (3,), np.float32), action_space=module.action_space,
                     model_config=spec.model_config)


def test_the_exported_policy_acts_as_the_modules_mean(ray_local, nav, tmp_path) -> None:  # noqa: F811
    from planners.policy_artifact import save_policy
    from worldmodel.artifact import load_model

    model = load_model(nav["model"])
    starts = read_starts(nav["logs"], "Nav2D-v0", 0)
    actor = initial_actor(model, starts, TINY)
    algo = ppo_config(EnvCreator(nav["model"], starts, TINY), actor, TINY).build_algo()
    try:
        algo.train()
        module = algo.get_module()
        actor.load_state_dict(module.actor.state_dict())
        obs = torch.as_tensor(starts[:7])
        zones = torch.tensor([[[0.0, 0.0, 1.0], [2.0, 1.0, 0.5]]]).expand(7, -1, -1)
        params = {GOAL: obs[:, 4:6], ZONES: zones}
        mean = module.forward_inference({Columns.OBS: actor.features(obs, params)})[Columns.ACTION_DIST_INPUTS][:, :2]
    finally:
        algo.stop()
    target = tmp_path / "model"
    save_model(model, target)
    save_policy(target, actor, {"test": True})
    loaded = load_policy(target)
    assert loaded is not None
    torch.testing.assert_close(loaded.act(obs, params), mean)


def test_train_policy_saves_a_versioned_policy_and_scores_it(ray_local, nav, tmp_path) -> None:  # noqa: F811
    from worldmodel.artifact import load_model

    target = tmp_path / "model"
    save_model(load_model(nav["model"]), target)
    lines = []
    first = train_policy(target, nav["logs"], TINY, progress=lines.append)
    assert [s.iteration for s in lines] == [1, 2] and lines[-1].env_steps >= 2 * 32 * 8
    assert first.version == "1.0.0" and first.path == str(target / "policy")
    assert first.real.episodes == first.imagined.episodes == TINY.eval_episodes
    assert 0 <= first.real.success_rate <= 1 and first.real.violations >= 0
    assert first.reset_starts == 0 and first.logged_starts == len(read_starts(nav["logs"], "Nav2D-v0", 0))
    info = policy_info(target)
    assert info["parent"] is None and info["summary"]["settings"]["num_envs"] == 32
    assert info["model_version"] == load_model(target).version
    second = train_policy(target, nav["logs"], TINY.with_overrides(iterations=1), progress=lines.append)
    assert second.version == "1.1.0" and policy_info(target)["parent"] == "1.0.0"
    assert load_policy(target) is not None


def test_bad_logs_fail_before_training(nav, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no trajectory logs"):
        train_policy(nav["model"], str(tmp_path / "none"), TINY)
    write_transitions(str(tmp_path / "pendulum"), collect("Pendulum-v1", episodes=1, seed=0), "Pendulum-v1")
    with pytest.raises(ValueError, match="from Pendulum-v1; the model was trained on Nav2D-v0"):
        train_policy(nav["model"], str(tmp_path / "pendulum"), TINY)


def test_the_learner_hook_trains_a_policy_once_per_version(ray_local, nav, tmp_path) -> None:  # noqa: F811
    from worldmodel.artifact import load_model

    registry = ModelRegistry(str(tmp_path / "registry"))
    version = registry.register(load_model(nav["model"])).version
    tiny = {k: v for k, v in TINY.to_dict().items() if k != "zones"}
    out = Learner._policy(registry, version, nav["logs"], tiny | {"iterations": 1})
    assert out["version"] == "1.0.0" and not out["existing"] and out["real"]["episodes"] == TINY.eval_episodes
    again = Learner._policy(registry, version, nav["logs"], tiny)  # a retried call: the policy is there
    assert again["existing"] and again["version"] == "1.0.0"
    assert load_policy(registry.model_dir(version)) is not None


def test_the_fleet_reward_is_the_costs_plus_a_progress_potential() -> None:
    """PPO's fleet reward: the env's (the planner's costs, its proximity terms weighed) + gamma Phi(s') - Phi(s),
    Phi = -w / (1 - gamma) x the aisle distance, + a bonus per arrival; 0 on the autoreset step."""
    from learners.policy_env import FleetPPOReward
    from planners.fleet_imagined_env import AISLE_DISTANCE, FleetImaginedEnv, FloorTicks
    from planners.fleet_rollout import ExactFleetModel
    from planners.warehouse_costs import WarehouseCosts
    from worldmodel.envs.warehouse import WarehouseFloor

    floor = WarehouseFloor(4, humans=0, action_noise=0.0)
    task = floor.reset(seed=0)[0][2, 4:6]  # robot 2 starts on its task point
    obs, _ = floor.reset(seed=0, options={"robots_pos": [[3.75, 6.0], [4.3, 6.0], task, [7.0, 10.0]]})
    ticks = FloorTicks.from_rows(obs, np.full(4, "floor-0"), np.zeros(4, np.int64))

    def env() -> FleetImaginedEnv:
        return FleetImaginedEnv(ExactFleetModel(floor.layout), WarehouseCosts(floor.layout), ticks, 1, horizon=2)

    plain, shaped = env(), FleetPPOReward(env(), scale=0.5, gamma=0.9, proximity=0.25, arrival=3.0)
    before = plain.reset(seed=0)[1][AISLE_DISTANCE]
    shaped.reset(seed=0)
    act = np.full((4, 2), 0.7, np.float32)
    _, reward, _, _, infos = plain.step(act)
    w, after = plain.costs.weights.progress, infos[AISLE_DISTANCE]
    near = reward + w * after  # the proximity costs
    assert (near < 0).any()  # robots 0 and 1 start in contact
    assert infos["is_success"].tolist() == [False, False, True, False]
    arrived = 3.0 * infos["is_success"]
    expected = 0.5 * (-w * after + 0.25 * near + w / (1 - 0.9) * (before - 0.9 * after) + arrived)
    np.testing.assert_allclose(shaped.step(act)[1], expected, rtol=1e-5, atol=1e-6)
    assert shaped.step(act)[3].all()  # truncated together
    np.testing.assert_array_equal(shaped.step(act)[1], np.zeros(4))  # the autoreset step
