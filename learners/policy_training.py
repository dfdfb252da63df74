"""A policy trained inside a world model with RLlib's PPO, exported as a plain ``PolicyNet``.

Imagined rollouts (``planners.imagined_env.ImaginedEnv``: starts from the logs, and a share
(``PolicySettings.reset_share``) from the real env's reset distribution, one random ensemble member per episode,
the planners' objective as reward) are PPO's environment, handed to RLlib as one
vector env (``VECTOR_ENTRY_POINT``) so each step of all rollouts is one batched model call. The
RLModule's actor is the ``PolicyNet`` serving loads (``learners.policy_module``), so the trained
actor is saved as it is into ``MODEL_DIR/policy/`` (``planners.policy_artifact.save_policy``).

A Warehouse-v1 fleet model trains in ``planners.fleet_imagined_env.FleetImaginedEnv``: whole logged floor
ticks as starts, every robot a sub-env, each floor stepped jointly through the multi-agent model, the
planner's ``WarehouseCosts`` as reward. The policy is the same ``PolicyNet`` over a robot's observation,
whose neighbour slots are its view of the neighbours; ``PolicySettings.num_envs`` counts floors there
(``FLEET_PRESET``), and the real-env score is a real floor driven by the policy alone.

Shapes: ``B`` rollouts, ``S`` state, ``A`` action, ``F`` policy input features.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import ray
import torch
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.tune.registry import register_env

from learners.policy_env import (EnvCreator, Evaluation, Starts, env_count, evaluate_floor, evaluate_imagined,
                                 evaluate_real, imagined_env, reset_observations)
from learners.policy_module import PolicyModule, module_config
from learners.settings import PolicySettings, policy_settings
from planners.fleet_imagined_env import FloorTicks
from planners.policy import PolicyConfig, PolicyNet
from planners.policy_artifact import policy_info, save_policy
from planners.warehouse_service import is_fleet_model
from worldmodel.artifact import load_model
from worldmodel.data import read_env_id, read_transitions, require_log_files
from worldmodel.envs import NAV2D_ID
from worldmodel.envs.warehouse import WAREHOUSE_ID
from worldmodel.model import WorldModel

__all__ = ["FLEET_PRESET", "IterationStats", "PolicyResult", "PolicySettings", "policy_preset",
           "policy_settings", "train_policy"]

SUCCESS = "success"
"""The env runners' metric of imagined episodes that reached the goal (a share, per iteration)."""
MAX_STARTS = 100_000
"""Logged observations kept as starts (a uniform subsample of larger logs; floor ticks: their rows)."""
RESET_SEEDS = 1_000_000
"""Offset of the seeds of reset starts, far from the evaluations' (``seed + 2`` on): the policy is never
trained from the very starts it is scored on."""
FLEET_PRESET = PolicySettings(iterations=200, num_envs=4, steps_per_env=64, horizon=128, reward_scale=0.1,
                              zone_weight=0.1, zones=(0, 0), eval_episodes=200)
"""Warehouse-v1 with a fleet model: ``num_envs`` floors of the logs' N robots (4 x 50: 12,800 rows per
iteration), episodes of 12.8 s. ``zone_weight`` weighs the agent and shelf proximity costs in PPO's reward
(``FleetPPOReward``): at 1 (and 0.3, 0.2) PPO learned to hold robots back and none delivered on a real
floor; at 0.1 they go to their tasks. About 6-8 minutes on the 2-core dev VM."""


def policy_preset(model: WorldModel, **overrides: Any) -> PolicySettings:
    """The preset for ``model`` (``FLEET_PRESET`` for a fleet model, else its env's) with ``overrides``."""
    if is_fleet_model(model):
        return FLEET_PRESET.with_overrides(**overrides)
    return policy_settings(model.spec.env_id, **overrides)


@dataclass(frozen=True)
class IterationStats:
    """One PPO iteration of the learning curve."""

    iteration: int
    env_steps: int
    """Imagined env steps sampled so far."""
    mean_return: float | None
    """Mean return of the last imagined episodes, under PPO's reward (``PolicySettings.zone_weight``) without
    its ``reward_scale`` (None: none has ended yet)."""
    success: float | None
    """Share of those episodes that reached the goal (None: none ended, or the env has no goal)."""
    seconds: float
    """Wall time since training started."""


@dataclass(frozen=True)
class PolicyResult:
    """What ``train_policy`` did and how well the policy does."""

    version: str
    """The policy's own version (``policy.json``)."""
    path: str
    """Its directory, ``MODEL_DIR/policy``."""
    model_version: str
    env_id: str
    settings: PolicySettings
    curve: tuple[IterationStats, ...]
    train_seconds: float
    """Wall time of PPO alone."""
    seconds: float
    """Wall time of everything: reading starts, PPO, evaluation, saving."""
    imagined: Evaluation
    """The deterministic policy (the mean action) in the imagined env."""
    real: Evaluation
    """The deterministic policy in the real env (Nav2D: with ``settings.eval_zones`` zones)."""
    logged_starts: int = 0
    """Imagined episodes' starts read from the logs (floor ticks for a fleet model)."""
    reset_starts: int = 0
    """Starts that are first observations of the real env's resets (``PolicySettings.reset_share``)."""

    def summary(self) -> dict[str, Any]:
        """JSON-friendly: everything but the path, as recorded in ``policy.json``."""
        return {"env_id": self.env_id, "model_version": self.model_version, "settings": self.settings.to_dict(),
                "curve": [vars(c) for c in self.curve], "train_seconds": self.train_seconds,
                "logged_starts": self.logged_starts, "reset_starts": self.reset_starts,
                "imagined": vars(self.imagined), "real": vars(self.real)}

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "path": self.path, **self.summary(), "seconds": self.seconds}


def read_starts(data_uri: str, env_id: str, seed: int) -> np.ndarray:
    """The logged observations imagined rollouts start from: (B0, S) float32.

    Raises:
        FileNotFoundError: no logs under ``data_uri``.
        ValueError: the logs were recorded in another env than the model's.
    """
    obs = read_transitions(data_uri, files=check_logs(data_uri, env_id)).obs
    if len(obs) > MAX_STARTS:
        obs = obs[np.random.default_rng(seed).choice(len(obs), MAX_STARTS, replace=False)]
    return np.ascontiguousarray(obs, dtype=np.float32)


def with_reset_starts(logged: np.ndarray, env_id: str, share: float, seed: int) -> np.ndarray:
    """``logged`` (B0, S) followed by as many first observations of the real env's resets
    (``reset_observations``, seeds from ``seed + RESET_SEEDS``) as make ``share`` of the rows: (B0 + R, S).

    Raises:
        ValueError: ``share`` is not in [0, 1).
    """
    if not 0 <= share < 1:
        raise ValueError(f"the share of reset starts must be in [0, 1), got {share!r}")
    resets = round(len(logged) * share / (1 - share))
    if not resets:
        return logged
    return np.concatenate([logged, reset_observations(env_id, resets, seed + RESET_SEEDS)])


def read_floor_ticks(data_uri: str, seed: int) -> FloorTicks:
    """The logged floor ticks imagined fleet rollouts start from (a uniform subsample of at most
    ``MAX_STARTS`` rows' worth of ticks). Raises as ``read_starts``; ValueError for logs without floors."""
    data = read_transitions(data_uri, files=check_logs(data_uri, WAREHOUSE_ID))
    ticks = FloorTicks.from_rows(data.obs, data.scene, data.t)
    most = max(1, MAX_STARTS // ticks.robots)
    if len(ticks.obs) > most:
        keep = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(ticks.obs), most, replace=False)))
        ticks = FloorTicks(ticks.obs[keep], ticks.humans_pos[keep], ticks.humans_vel[keep])
    return ticks


def check_logs(data_uri: str, env_id: str) -> list[str]:
    """The log files under ``data_uri`` (see ``read_starts`` for what is checked)."""
    files = require_log_files(data_uri)[2]
    logged = read_env_id(data_uri, files=files)
    if logged and logged != env_id:
        raise ValueError(f"the logs under {data_uri} are from {logged}; the model was trained on {env_id}")
    return files


def _count_success(episode: Any, metrics_logger: Any, *, window: int, **_: Any) -> None:
    """on_episode_end: log whether the imagined episode reached the goal (its last info's ``is_success``),
    averaged over the last ``window`` episodes as RLlib averages their returns."""
    info = episode.get_infos(-1)
    if "is_success" in info:
        metrics_logger.log_value(SUCCESS, float(info["is_success"]), reduce="mean", window=window)


def ppo_config(creator: EnvCreator, actor: PolicyNet, settings: PolicySettings, envs: int | None = None) -> PPOConfig:
    """PPO on the new API stack over one local vector env of ``envs`` imagined rollouts (default
    ``settings.num_envs``), with ``PolicyModule``."""
    s, envs = settings, envs or settings.num_envs
    rows = envs * s.steps_per_env
    spec = RLModuleSpec(module_class=PolicyModule, model_config=module_config(
        actor, log_std_init=s.log_std_init, critic_hidden=s.critic_hidden))
    # Nav2D (the one env with a goal) counts successes; a creator is registered under a name of its own:
    # RLlib takes a registered name (or an env class) for one.
    callbacks = {"on_episode_end": functools.partial(_count_success, window=s.num_envs)} if actor.zones else {}
    name = f"fleetwm-imagined-{uuid.uuid4().hex[:8]}"
    register_env(name, creator)
    return (PPOConfig()
            .environment(env=name, normalize_actions=False, clip_actions=True)
            .env_runners(num_env_runners=0, num_envs_per_env_runner=envs,
                         gym_env_vectorize_mode=gym.VectorizeMode.VECTOR_ENTRY_POINT,
                         rollout_fragment_length=s.steps_per_env)
            .learners(num_learners=0)
            .training(lr=s.lr, gamma=s.gamma, lambda_=s.gae_lambda, clip_param=s.clip, entropy_coeff=s.entropy,
                      train_batch_size_per_learner=rows, minibatch_size=min(s.minibatch, rows),
                      num_epochs=s.epochs, use_kl_loss=False, vf_clip_param=math.inf, grad_clip=0.5)
            .rl_module(rl_module_spec=spec)
            .callbacks(**callbacks)
            .debugging(seed=s.seed, log_level="ERROR")
            .reporting(metrics_num_episodes_for_smoothing=envs))


def train_policy(model_dir: str | os.PathLike[str], data_uri: str, settings: PolicySettings | None = None,
                 progress: Callable[[IterationStats], None] | None = None) -> PolicyResult:
    """Train a policy inside the model at ``model_dir`` with PPO, score it, save it in ``MODEL_DIR/policy``
    (``fit_policy``, then ``save_fitted``)."""
    start = time.perf_counter()
    actor, fitted = fit_policy(model_dir, data_uri, settings, progress)
    return save_fitted(model_dir, actor, fitted, start)


def save_fitted(model_dir: str | os.PathLike[str], actor: PolicyNet, fitted: PolicyResult,
                start: float) -> PolicyResult:
    """Save a ``fit_policy`` actor in ``MODEL_DIR/policy`` (its version after the one there); ``start``: when the
    work began (``time.perf_counter``), for ``seconds``."""
    path = save_policy(model_dir, actor, fitted.summary())
    version = (policy_info(model_dir) or {})["version"]
    return replace(fitted, version=version, path=str(path), seconds=round(time.perf_counter() - start, 2))


def fit_policy(model_dir: str | os.PathLike[str], data_uri: str, settings: PolicySettings | None = None,
               progress: Callable[[IterationStats], None] | None = None) -> tuple[PolicyNet, PolicyResult]:
    """Train a policy inside the model at ``model_dir`` with PPO and score it; nothing is saved (the result's
    ``version`` and ``path`` are empty).

    Args:
        model_dir: a world model's artifact directory (a registry's version directory included).
        data_uri: trajectory logs of the model's env; imagined rollouts start from their observations
            (and, for a ``reset_share`` above 0, from the real env's first observations: ``_starts``).
        settings: PPO and evaluation settings (default: ``policy_preset`` of the model).
        progress: called after every iteration (default: a line on stderr).

    Raises:
        ArtifactError: ``model_dir`` is not a valid model; FileNotFoundError: no logs;
        ValueError: logs of another env (a fleet model: or without whole floor ticks).
    """
    start = time.perf_counter()
    model = load_model(model_dir)
    settings = settings or policy_preset(model)
    fleet, seed = is_fleet_model(model), settings.seed
    starts, logged, resets = _starts(model, data_uri, seed, settings.reset_share)
    torch.manual_seed(settings.seed)
    actor = initial_actor(model, starts, settings)
    _ensure_ray()
    envs = env_count(starts, settings.num_envs)
    algo = ppo_config(EnvCreator(str(model_dir), starts, settings), actor, settings, envs).build_algo()
    try:
        curve = _train(algo, settings, progress or _print_progress)
        actor.load_state_dict(algo.get_module().actor.state_dict())
    finally:
        algo.stop()
    train_seconds = round(time.perf_counter() - start, 2)
    imagined = evaluate_imagined(model, starts, actor, settings)
    if fleet:
        real = evaluate_floor(actor, starts.robots, settings)
    else:
        real = evaluate_real(actor, model.spec.env_id, settings)
    return actor, PolicyResult(version="", path="", model_version=model.version, env_id=model.spec.env_id,
                               settings=settings, curve=curve, train_seconds=train_seconds,
                               seconds=round(time.perf_counter() - start, 2), imagined=imagined, real=real,
                               logged_starts=logged, reset_starts=resets)


def _starts(model: WorldModel, data_uri: str, seed: int, reset_share: float) -> tuple[Starts, int, int]:
    """Imagined episodes' starts for ``model``, with how many of them are logged and how many resets
    (``PolicySettings.reset_share`` of them). Pendulum's logs are mostly upright (four of their five episodes
    are planned swing-ups that then hold the top), so from logged starts alone PPO rarely practises the swing-up
    a real episode begins with; its preset starts most episodes from the env's resets."""
    if is_fleet_model(model):
        ticks = read_floor_ticks(data_uri, seed)
        return ticks, len(ticks.obs), 0
    env_id = model.spec.env_id
    logged = read_starts(data_uri, env_id, seed)
    starts = with_reset_starts(logged, env_id, reset_share, seed)
    return starts, len(logged), len(starts) - len(logged)


def initial_actor(model: WorldModel, starts: Starts, settings: PolicySettings) -> PolicyNet:
    """An untrained PolicyNet whose input normalisation fits the features of imagined episodes' starts."""
    spec = model.spec
    actor = PolicyNet(spec.obs_dim, spec.act_dim, spec.act_low, spec.act_high,
                      PolicyConfig(hidden=settings.hidden, layers=settings.layers), zones=spec.env_id == NAV2D_ID)
    env = imagined_env(model, starts, env_count(starts, 1), settings, seed=settings.seed)
    actor.set_normalisation(*env.feature_stats())
    return actor


def _ensure_ray() -> None:
    """RLlib needs Ray: join the one this process is connected to, or start a local one."""
    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local Ray of this process, as the tests run it
        ray.init(address="local", include_dashboard=False, log_to_driver=False)


def _train(algo: Any, settings: PolicySettings, progress: Callable[[IterationStats], None]) -> tuple[IterationStats, ...]:
    """``settings.iterations`` PPO iterations; the learning curve."""
    curve, start = [], time.perf_counter()
    for i in range(1, settings.iterations + 1):
        runners = algo.train()["env_runners"]
        mean_return = runners.get("episode_return_mean")
        stats = IterationStats(
            iteration=i, env_steps=int(runners.get("num_env_steps_sampled_lifetime", 0)),
            mean_return=None if mean_return is None or math.isnan(mean_return)
            else float(mean_return) / settings.reward_scale,
            success=_float(runners.get(SUCCESS)), seconds=round(time.perf_counter() - start, 2))
        curve.append(stats)
        progress(stats)
    return tuple(curve)


def _float(value: Any) -> float | None:
    """A metric as a plain float (RLlib may hand numpy scalars, which JSON does not take)."""
    return None if value is None else float(value)


def _print_progress(stats: IterationStats) -> None:
    ret = "-" if stats.mean_return is None else f"{stats.mean_return:.1f}"
    success = "" if stats.success is None else f", success {stats.success:.1%}"
    print(f"policy: iteration {stats.iteration}: {stats.env_steps} imagined steps, return {ret}{success}, "
          f"{stats.seconds:.0f} s", file=sys.stderr, flush=True)
