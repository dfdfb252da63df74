"""What PPO trains in and how the trained policy is scored: imagined rollouts kept on the data's
support, the reward PPO sees, and deterministic evaluations in the imagined and the real env.

A Warehouse-v1 fleet model trains in ``FleetImaginedEnv``: its starts are whole logged floor ticks
(``FloorTicks``), its sub-envs robots, ``floors`` of N robots stepped jointly (``env_count``).

Shapes: ``B`` rollouts, ``S`` state, ``A`` action, ``F`` policy input features, ``N`` robots per floor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from learners.settings import PolicySettings
from planners.evaluate import agent_params
from planners.fleet_imagined_env import AISLE_DISTANCE, PROGRESS, FleetImaginedEnv, FloorTicks
from planners.imagined_env import ImaginedEnv
from planners.policy import PolicyNet
from planners.warehouse_costs import WarehouseCosts
from worldmodel.artifact import load_model
from worldmodel.dynamics import Prediction
from worldmodel.envs import NAV2D_ID, make_env
from worldmodel.envs.nav2d import GOAL_DIMS, POS_DIMS
from worldmodel.envs import warehouse
from worldmodel.envs.warehouse_features import observe
from worldmodel.envs.warehouse_layout import layout_for
from worldmodel.model import WorldModel
from worldmodel.recurrent import RecurrentDynamics

SUPPORT_MARGIN = 0.1
"""Imagined states are kept within the logged observations' range widened by this share of it."""
LAYOUT_TOLERANCE = 1e-3
"""A logged floor tick's observations rebuilt on ``layout_for(N)`` match within this, or the logs are of
another floor."""

Starts = np.ndarray | FloorTicks
"""Where imagined episodes start: logged observations (B0, S), or a fleet model's whole floor ticks."""


class SupportClamp(nn.Module):
    """A dynamics model whose predicted means stay inside a box: (B, S) or (E, B, S) -> Prediction.

    Outside the logged data a learned model extrapolates freely (a Nav2D model lets an agent leave the
    arena at several times the top speed), and PPO found that region a sink it never came back from:
    the box plays the part of the real env's walls and speed limit.
    """

    def __init__(self, dynamics: nn.Module, low: torch.Tensor, high: torch.Tensor) -> None:
        super().__init__()
        self.dynamics, self.members = dynamics, int(getattr(dynamics, "members", 1))
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> Prediction:
        pred = self.dynamics(obs, action)
        return Prediction(torch.minimum(torch.maximum(pred.mean, self.low), self.high), pred.var, pred.scale)


def on_support(model: WorldModel, starts: np.ndarray) -> WorldModel:
    """``model`` with its dynamics clamped to the range of ``starts`` (B0, S), widened by SUPPORT_MARGIN
    (a recurrent model is returned as it is, for ImaginedEnv to refuse)."""
    if isinstance(model.dynamics, RecurrentDynamics):
        return model
    low, high = torch.as_tensor(starts.min(0)), torch.as_tensor(starts.max(0))
    pad = SUPPORT_MARGIN * (high - low)
    clamp = SupportClamp(model.dynamics, low - pad, high + pad).to(model.device)
    return dataclasses.replace(model, dynamics=clamp)


def reset_observations(env_id: str, count: int, seed: int) -> np.ndarray:
    """(count, S) float32: the first observations of ``count`` resets of the real env ``env_id``, seeded
    ``seed``, ``seed + 1``, ... Only ``reset`` runs: no action is taken and no transition or reward is
    seen, so a policy trained from these starts still learns every step it takes from the model."""
    env = gym.vector.SyncVectorEnv([lambda: make_env(env_id) for _ in range(count)])
    try:
        obs, _ = env.reset(seed=seed)
    finally:
        env.close()
    return np.ascontiguousarray(obs, dtype=np.float32)


def env_count(starts: Starts, rollouts: int) -> int:
    """Sub-envs of ``rollouts`` imagined rollouts: floors of N robots for floor ticks, else one each."""
    return rollouts * starts.robots if isinstance(starts, FloorTicks) else rollouts


def imagined_env(model: WorldModel, starts: Starts, num_envs: int, settings: PolicySettings,
                 seed: int) -> ImaginedEnv | FleetImaginedEnv:
    """``num_envs`` imagined rollouts of ``model`` (kept on the starts' support) as ``settings`` describe;
    for floor ticks ``num_envs`` robots, ``num_envs / N`` floors."""
    if isinstance(starts, FloorTicks):
        floors, rest = divmod(num_envs, starts.robots)
        if rest or not floors:
            raise ValueError(f"a fleet env has whole floors of N = {starts.robots} robots; got num_envs {num_envs}")
        return FleetImaginedEnv(model.dynamics, floor_costs(starts, model.device), starts, floors,
                                horizon=settings.horizon, seed=seed, uncertainty_penalty=settings.uncertainty_penalty)
    nav = model.spec.env_id == NAV2D_ID
    kwargs: dict[str, Any] = {"zones": settings.zones} if nav else {}
    return ImaginedEnv(on_support(model, starts), starts, num_envs, objective="goal" if nav else "learned",
                       horizon=settings.horizon, seed=seed, uncertainty_penalty=settings.uncertainty_penalty, **kwargs)


def floor_costs(starts: FloorTicks, device: torch.device | str = "cpu") -> WarehouseCosts:
    """The planners' costs on the logged floor, ``layout_for(N)`` (``WarehouseFloor``'s default layout).

    Raises:
        ValueError: the first tick's observations rebuilt on that layout differ from the logged ones.
    """
    costs = WarehouseCosts(layout_for(starts.robots), device=device)
    obs, humans_pos, humans_vel = starts.obs[0], starts.humans_pos[0], starts.humans_vel[0]
    pos, vel, task = (obs[:, dims] for dims in (warehouse.POS_DIMS, warehouse.VEL_DIMS, warehouse.TASK_DIMS))
    kinds = np.repeat([warehouse.KIND_ROBOT, warehouse.KIND_HUMAN], [starts.robots, len(humans_pos)])
    rebuilt, _ = observe(pos, vel, task, torch.cat([pos, humans_pos]), torch.cat([vel, humans_vel]), kinds,
                         costs.layout)
    gap = float((rebuilt - obs).abs().max())
    if not gap <= LAYOUT_TOLERANCE:
        raise ValueError(f"the logged floor of {starts.robots} robots is not layout_for({starts.robots}): its "
                         f"observations rebuilt there differ by {gap:.3g} (> {LAYOUT_TOLERANCE})")
    return costs


class PPOReward(gym.vector.VectorWrapper):
    """The reward PPO learns from: ``scale`` x (Nav2D: the goal reward plus ``zone_weight`` x the zone cost;
    else the env's reward).

    The goal reward (minus the new position's distance to the goal) is read back from the observation
    (the features start with it), the rest of the objective is the zones' cost. Autoreset steps keep
    their reward of 0.
    """

    def __init__(self, env: gym.vector.VectorEnv, scale: float, zone_weight: float, nav: bool) -> None:
        super().__init__(env)
        self.scale, self.zone_weight, self.nav = scale, zone_weight, nav
        self._ended = np.zeros(env.num_envs, bool)  # (B,) the env's episode ended on the previous step

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        self._ended[:] = False
        return self.env.reset(**kwargs)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, reward, terminated, truncated, infos = self.env.step(actions)
        if self.nav and self.zone_weight != 1.0:
            goal = -np.linalg.norm(obs[:, POS_DIMS] - obs[:, GOAL_DIMS], axis=1)  # (B,)
            reward = np.where(self._ended, 0.0, goal + self.zone_weight * (reward - goal))
        self._ended = np.asarray(terminated) | np.asarray(truncated)
        return obs, (reward * self.scale).astype(np.float32), terminated, truncated, infos


class FleetPPOReward(gym.vector.VectorWrapper):
    """The reward PPO learns from in a fleet env: ``scale`` x (progress + gamma Phi(s') - Phi(s) + ``proximity``
    x the agent and shelf proximity costs + ``arrival`` per task point reached).

    Phi = -k x the robot's aisle distance to its task, k = w / (1 - gamma) (w: the progress weight), a
    potential-based shaping (Ng et al. 1999: the same optimal policy) that turns the progress term
    -w d' into k (d - d'), the metres gained this step: the critic need not learn every robot's
    distance field from its position, only what is still to come. ``proximity`` 1 keeps the planner's
    objective; below 1 it plays Nav2D's ``zone_weight``: from crowded logged starts PPO at the full
    weight learns to hold still, never the way to the task. When a robot reaches its task and takes the
    next, the potential starts over from the new task (arriving is not charged the new task's distance),
    and ``arrival`` (default: the floor's own reward of a delivery) pays for the last metre, which the
    progress term alone pays too little for a policy to finish its approach. Autoreset steps keep their
    reward of 0.
    """

    def __init__(self, env: FleetImaginedEnv, scale: float, gamma: float, proximity: float = 1.0,
                 arrival: float = warehouse.DELIVERY_REWARD) -> None:
        super().__init__(env)
        self.scale, self.gamma, self.proximity, self.arrival = scale, gamma, proximity, arrival
        self.weight = env.costs.weights.progress
        self.gain = env.costs.weights.progress / (1.0 - gamma) if gamma < 1 else 0.0
        self._ended = np.zeros(env.num_envs, bool)  # (B,) the episode ended on the previous step

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        self._ended[:] = False
        return self.env.reset(**kwargs)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, reward, terminated, truncated, infos = self.env.step(actions)
        # The env's reward less its progress term -w d': the proximity costs (and any uncertainty penalty).
        near = reward + self.weight * infos[AISLE_DISTANCE]
        # -w d' + gamma Phi(s') - Phi(s) = k (d - d'), the metres gained times k.
        shaped = self.gain * infos[PROGRESS] + self.proximity * near + self.arrival * infos["is_success"]
        reward = np.where(self._ended, 0.0, shaped)
        self._ended = np.asarray(terminated) | np.asarray(truncated)
        return obs, (reward * self.scale).astype(np.float32), terminated, truncated, infos


class EnvCreator:
    """RLlib's env creator: ``config["num_envs"]`` imagined rollouts as one vector env, with PPO's reward
    (picklable, so a remote env runner builds its own from the model directory)."""

    def __init__(self, model_dir: str, starts: Starts, settings: PolicySettings) -> None:
        self.model_dir, self.starts, self.settings = model_dir, starts, settings

    def __call__(self, config: dict[str, Any]) -> gym.vector.VectorEnv:
        s, model = self.settings, load_model(self.model_dir)
        env = imagined_env(model, self.starts, config["num_envs"], s,
                           seed=s.seed + int(getattr(config, "worker_index", 0)))
        if isinstance(env, FleetImaginedEnv):
            return FleetPPOReward(env, s.reward_scale, s.gamma, proximity=s.zone_weight)
        return PPOReward(env, s.reward_scale, s.zone_weight, model.spec.env_id == NAV2D_ID)


@dataclass(frozen=True)
class Evaluation:
    """The deterministic policy's first episode in each of ``episodes`` envs."""

    episodes: int
    mean_return: float
    """Under the env's own reward (the planners' objective in the imagined env)."""
    success_rate: float | None
    """Share of episodes that reached the goal (None: the env has no goal)."""
    violations: int
    """Steps spent inside a no-fly zone, over all episodes."""
    episodes_with_violation: int


def evaluate_imagined(model: WorldModel, starts: Starts, actor: PolicyNet, settings: PolicySettings) -> Evaluation:
    """The mean action's first episode in each of ``settings.eval_episodes`` imagined rollouts (floor
    ticks: robots, on as many floors as that takes)."""
    rollouts = -(-settings.eval_episodes // starts.robots) if isinstance(starts, FloorTicks) else settings.eval_episodes
    env = imagined_env(model, starts, env_count(starts, rollouts), settings, seed=settings.seed + 1)
    act = lambda features, infos: actor(torch.as_tensor(features)).numpy()  # noqa: E731
    with torch.no_grad():
        return _first_episodes(env, act, settings.seed + 1, model.spec.env_id == NAV2D_ID)


def evaluate_real(actor: PolicyNet, env_id: str, settings: PolicySettings) -> Evaluation:
    """The mean action's first episode in each of ``settings.eval_episodes`` real envs (Nav2D: with
    ``settings.eval_zones`` no-fly zones, which the policy sees as a planner would)."""
    kwargs = {"num_no_fly_zones": settings.eval_zones} if env_id == NAV2D_ID else {}
    env = gym.vector.SyncVectorEnv([lambda: make_env(env_id, **kwargs) for _ in range(settings.eval_episodes)])

    def act(obs_np: np.ndarray, infos: dict[str, Any]) -> np.ndarray:
        obs = torch.as_tensor(obs_np, dtype=torch.float32)
        return actor.act(obs, agent_params(env_id, obs, infos)).numpy()

    try:
        return _first_episodes(env, act, settings.seed + 2, env_id == NAV2D_ID)
    finally:
        env.close()


def evaluate_floor(actor: PolicyNet, robots: int, settings: PolicySettings) -> Evaluation:
    """The mean action driving every robot of a real floor of ``robots`` (``layout_for(robots)``) for one
    episode of ``settings.horizon`` ticks; each robot is an episode, a tick in contact a violation."""
    env = _Contacts(warehouse.WarehouseVectorEnv(robots, max_episode_steps=settings.horizon))

    def act(obs_np: np.ndarray, infos: dict[str, Any]) -> np.ndarray:
        return actor.act(torch.as_tensor(obs_np, dtype=torch.float32)).numpy()

    return _first_episodes(env, act, settings.seed + 2, has_goal=False)


class _Contacts(gym.vector.VectorWrapper):
    """A real floor whose infos say per robot whether it touched an agent, shelf or wall this tick (``violation``)."""

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, reward, terminated, truncated, infos = self.env.step(actions)
        contact = (infos["collisions"] + infos["shelf_collisions"]) > 0
        return obs, reward, terminated, truncated, {**infos, "violation": contact}


def _first_episodes(env: gym.vector.VectorEnv, act: Callable[[np.ndarray, dict[str, Any]], np.ndarray], seed: int,
                    has_goal: bool) -> Evaluation:
    """Step every env of ``env`` with ``act`` until each has ended its first episode; their statistics."""
    n = env.num_envs
    obs, infos = env.reset(seed=seed)
    ret, violations = np.zeros(n), np.zeros(n, int)  # (B,)
    done, success = np.zeros(n, bool), np.zeros(n, bool)
    while not done.all():
        obs, rew, term, trunc, infos = env.step(act(obs, infos))
        live = ~done  # each env counts until its first episode ends (the next step would reset it)
        ret += np.where(live, rew, 0.0)
        violations += np.asarray(infos.get("violation", np.zeros(n, bool)), bool) & live
        ended = (np.asarray(term) | np.asarray(trunc)) & live
        success |= ended & np.asarray(infos.get("is_success", np.zeros(n, bool)), bool)
        done |= ended
    return Evaluation(episodes=n, mean_return=round(float(ret.mean()), 3),
                      success_rate=round(float(success.mean()), 4) if has_goal else None,
                      violations=int(violations.sum()), episodes_with_violation=int((violations > 0).sum()))
