"""Planning from pixels: N PixelNav2D agents in closed loop through the latent world model.

Each step every running agent's last frames are encoded at once (one encoder call), the planner
(CEM, ``planners.cem``, unchanged) searches action sequences for all agents in one batched rollout of
the latent ensemble (``worldmodel.latent.LatentDynamics``), scored by the model's heads:
- ``LatentReward``: the learned reward (minus the distance to the goal drawn in the image);
- ``LatentBreach``: minus ``weight`` times the predicted chance of a geofence breach, so zones are
  avoided by what the model learned from the logged breach flag, never from positions.
The true state in ``info`` only counts successes and zone steps.

Dimensions: ``N`` agents, ``K`` candidates, ``H`` horizon, ``E`` members, ``F`` stacked frames,
``Z`` latent, ``M`` its moving part (what the dynamics predicts; rollouts carry it alone), ``A`` action, ``X``
leading axis of an objective's input, ``R`` rollouts per agent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from planners.base import PlanResult, shift_plan
from planners.cem import CEMConfig, CEMPlanner
from planners.config import BREACH_WEIGHT, LATENT_PLAN, PlanConfig
from planners.objectives import ZONE_MAP, Objective, Params
from worldmodel.envs.camera import PixelNav2DEnv
from worldmodel.latent import LatentDynamics, LatentWorldModel


def planning_inputs(model: LatentWorldModel, z: torch.Tensor) -> tuple[torch.Tensor, Params]:
    """What a latent planner plans from: N agents' latents (N, Z) -> their moving parts (N, M), the states it
    rolls out (``LatentDynamics``), and params with each agent's zone map (``ZONE_MAP``: (N, G*G))."""
    return z[:, :model.cfg.moving], {ZONE_MAP: z[:, model.cfg.moving:]}


class LatentReward:
    """The model's reward head on each reached latent: (X, N, R, M) -> (X, N, R)."""

    def __init__(self, model: LatentWorldModel) -> None:
        self.model = model

    def __call__(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor, params: Params) -> torch.Tensor:
        return self.model.reward(new_obs)


class LatentBreach:
    """Minus ``weight`` times the predicted chance of a geofence breach at each reached latent, its agent's zone map
    read from ``params[ZONE_MAP]``: (X, N, R, M) -> (X, N, R)."""

    def __init__(self, model: LatentWorldModel, weight: float = BREACH_WEIGHT) -> None:
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.model, self.weight = model, weight

    def __call__(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor, params: Params) -> torch.Tensor:
        return -self.weight * torch.sigmoid(self.model.breach_logit(new_obs, params[ZONE_MAP]))


def latent_planner(model: LatentWorldModel, plan: PlanConfig = LATENT_PLAN, cem: CEMConfig = CEMConfig(),
                   breach_weight: float = BREACH_WEIGHT, served: bool = False) -> CEMPlanner:
    """CEM over the latent ensemble, scored by the reward and breach heads; actions in [-1, 1]^A. ``served``: a call
    short of time for a whole round samples fewer candidates (``CEMPlanner``'s ``shrink``), and one short of time
    for any acts on the warm starts (``BasePlanner``'s ``hold_plan``)."""
    a = model.cfg.act_dim
    terms = [LatentReward(model)] + ([LatentBreach(model, breach_weight)] if breach_weight else [])
    return CEMPlanner(LatentDynamics(model), Objective(terms), -torch.ones(a), torch.ones(a), plan, cem,
                      shrink=served, hold_plan=served)


@dataclass(frozen=True)
class LatentEvalConfig:
    """A closed-loop evaluation: ``episodes`` episodes, ``agents`` at a time, on seeded PixelNav2D."""

    episodes: int = 100
    """Episodes in all (a multiple of ``agents`` is fastest)."""
    agents: int = 50
    """N, agents planned for together."""
    steps: int = 200
    """Step limit of an episode (PixelNav2D's registration)."""
    seed: int = 10_000
    """Seed of the first episode; episode i resets with seed + i (away from training data's seeds)."""
    plan: PlanConfig = LATENT_PLAN
    """Planner settings."""
    breach_weight: float = BREACH_WEIGHT
    """Cost of a predicted breach (``LatentBreach``); 0 plans for the reward alone."""
    env: dict[str, Any] = field(default_factory=dict)
    """PixelNav2DEnv options (its defaults: 2 zones, camera noise std 8)."""

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.agents < 1 or self.steps < 1:
            raise ValueError(f"episodes, agents and steps must be >= 1, got {self.episodes}, {self.agents}, "
                             f"{self.steps}")


@dataclass(frozen=True)
class LatentEvalResult:
    """Closed-loop outcome. Arrays have one entry per episode."""

    success: np.ndarray
    """(episodes,) bool, reached the goal within the step limit."""
    zone_steps: np.ndarray
    """(episodes,) int, steps that ended inside a no-fly zone."""
    steps: np.ndarray
    """(episodes,) int, steps taken."""
    ms_per_step: float
    """Wall time of one closed-loop step for all running agents (encode, plan, env), averaged."""

    @property
    def success_rate(self) -> float:
        return float(self.success.mean())

    @property
    def violation_episodes(self) -> int:
        return int((self.zone_steps > 0).sum())

    def summary(self) -> str:
        return (f"{len(self.success)} episodes: success {self.success_rate:.1%}, zone steps "
                f"{int(self.zone_steps.sum())} in {self.violation_episodes} episodes, mean steps {self.steps.mean():.1f}, "
                f"{self.ms_per_step:.0f} ms/step")


def run_latent(model: LatentWorldModel, cfg: LatentEvalConfig = LatentEvalConfig(),
               progress: Callable[[str], None] | None = None) -> LatentEvalResult:
    """Run ``cfg.episodes`` episodes, ``cfg.agents`` at a time, planning through ``model`` on its device;
    ``progress`` gets a line after each group of agents."""
    model.eval()
    planner = latent_planner(model, cfg.plan, breach_weight=cfg.breach_weight)
    parts, seconds, calls = [], 0.0, 0
    for first in range(0, cfg.episodes, cfg.agents):
        seeds = range(cfg.seed + first, cfg.seed + min(first + cfg.agents, cfg.episodes))
        outcome, wall, steps = _run_group(model, planner, cfg, list(seeds))
        parts.append(outcome)
        seconds, calls = seconds + wall, calls + steps
        if progress is not None:
            done = np.concatenate([p[0] for p in parts])
            progress(f"{len(done)}/{cfg.episodes} episodes: success {done.mean():.1%}, "
                     f"{1000 * seconds / max(calls, 1):.0f} ms/step")
    success, zone_steps, steps = (np.concatenate(x) for x in zip(*parts))
    return LatentEvalResult(success, zone_steps, steps, 1000 * seconds / max(calls, 1))


@torch.no_grad()
def _run_group(model: LatentWorldModel, planner: CEMPlanner, cfg: LatentEvalConfig,
               seeds: list[int]) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], float, int]:
    """One batch of agents to the end: ((success, zone steps, steps) per agent, wall seconds, steps run)."""
    n, f = len(seeds), model.cfg.frames
    envs = [PixelNav2DEnv(**cfg.env) for _ in seeds]
    first = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds)])  # (N, H, W, C)
    stacks = np.repeat(first[:, None], f, axis=1)  # (N, F, H, W, C): at rest before the first step
    plans = planner.initial_plan(n)  # (N, H, A)
    running = np.ones(n, bool)
    success, zone_steps, steps = np.zeros(n, bool), np.zeros(n, np.int64), np.zeros(n, np.int64)
    start, t = time.perf_counter(), 0
    z = model.encode(torch.from_numpy(stacks).to(planner.device))  # (N, Z): every agent at once
    while running.any() and t < cfg.steps:
        rows = np.flatnonzero(running)
        result: PlanResult = planner.plan(*planning_inputs(model, z[rows]), warm_start=plans[rows])
        plans[rows] = shift_plan(result.plan)
        actions = result.actions.cpu().numpy()  # (N', A)
        for i, action in zip(rows, actions):  # the envs step one by one; the model saw them together
            frame, _, done, _, info = envs[i].step(action)
            stacks[i] = np.concatenate([stacks[i, 1:], frame[None]])
            steps[i] += 1
            zone_steps[i] += bool(info["violation"])
            success[i] |= bool(info["is_success"])
            running[i] = not done
        z[rows] = model.observe(z[rows], result.actions, torch.from_numpy(stacks[rows]).to(planner.device))
        t += 1
    return (success, zone_steps, steps), time.perf_counter() - start, t


@torch.no_grad()
def episode_latents(model: LatentWorldModel, frames: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Diagnostics only: the latent planning would start from at every frame of Ep episodes: each frame stack's
    encoding, or for a recurrent model the filter run from each episode's first frame under its actions.

    Args: frames (Ep, T+1, H, W, C) uint8; actions (Ep, T, A). Returns (Ep, T+1, Z)."""
    from worldmodel.latent_training import frame_stacks

    ep, t1 = frames.shape[:2]
    index = np.arange(ep)
    stacks = lambda t: torch.from_numpy(frame_stacks(frames, index, np.full(ep, t), model.cfg.frames))  # noqa: E731
    z = [model.encode(stacks(0))]
    for t in range(1, t1):
        z.append(model.observe(z[-1], torch.from_numpy(actions[:, t - 1]), stacks(t)))
    return torch.stack(z, 1).numpy()


def linear_probe(latents: np.ndarray, targets: np.ndarray, train_share: float = 0.8) -> tuple[float, float]:
    """Diagnostics only: a linear least-squares readout of ``targets`` (B, D) from ``latents`` (B, Z), fitted after
    training on the first ``train_share`` of the rows and scored on the rest: (R^2, RMSE) on those."""
    x = np.concatenate([latents.astype(np.float64), np.ones((len(latents), 1))], 1)  # (B, Z+1)
    cut = int(len(x) * train_share)
    w, *_ = np.linalg.lstsq(x[:cut], targets[:cut], rcond=None)
    err = x[cut:] @ w - targets[cut:]
    r2 = 1 - err.var(0).sum() / targets[cut:].var(0).sum()
    return float(r2), float(np.sqrt((err ** 2).sum(1).mean()))


@torch.no_grad()
def head_scores(model: LatentWorldModel, latents: np.ndarray, rewards: np.ndarray, breach: np.ndarray,
                steps: np.ndarray) -> tuple[float, float]:
    """Diagnostics only: how well the heads read the latents planning starts from (``episode_latents``).

    Args: latents (Ep, T+1, Z); rewards and breach (Ep, T), the logged reward and geofence-breach flag of the step
    that arrived at frame t+1 (NaN flags: unknown); steps (Ep,) each episode's length.

    Returns:
        (RMSE of the reward head against the logged reward, in the env's units; the breach head's ``auroc``).
    """
    real = np.arange(rewards.shape[1])[None] < steps[:, None]  # (Ep, T)
    arrived = torch.from_numpy(latents[:, 1:][real])  # (B, Z) the latents the steps arrived at
    error = model.reward(arrived).numpy() - rewards[real]
    return float(np.sqrt(np.mean(error ** 2))), auroc(model.breach_logit(arrived).numpy(), breach[real])


@torch.no_grad()
def breach_ahead(model: LatentWorldModel, latents: np.ndarray, actions: np.ndarray, breach: np.ndarray,
                 steps: np.ndarray, ahead: tuple[int, ...] = (1, 5, 10, 20)) -> dict[int, float]:
    """Diagnostics only: the breach head's ``auroc`` on latents the dynamics predicts ``k`` steps ahead (the members'
    mean, under the logged actions, from every latent planning could start from), for each k in ``ahead``: how far
    ahead a plan's predicted breaches can be trusted.

    Args: latents (Ep, T+1, Z) (``episode_latents``); actions (Ep, T, A); breach (Ep, T) as ``head_scores``'s;
    steps (Ep,) each episode's length.

    Returns:
        {k: the AUROC k steps ahead} (NaN where the rollouts reach no breaching step, or only breaching ones).
    """
    t_max, out = actions.shape[1], {}
    for k in ahead:
        start = np.arange(t_max - k + 1)  # (T',) rollouts that stay inside the logged steps
        z = torch.from_numpy(latents[:, start]).flatten(0, 1)  # (Ep*T', Z)
        for j in range(k):
            z = model.next(z, torch.from_numpy(actions[:, start + j]).flatten(0, 1)).mean(0)
        real = (start + k)[None] <= steps[:, None]  # (Ep, T') the step arrived at is the episode's
        score = model.breach_logit(z).numpy().reshape(real.shape)
        out[k] = auroc(score[real], breach[:, start + k - 1][real])
    return out


def auroc(scores: np.ndarray, flags: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a flagged row scores higher than an unflagged one, ties half.

    Args: scores (B,); flags (B,) 1 flagged, 0 not, NaN unknown (left out).

    Returns:
        0.5 for a coin, 1 for a perfect ranking, 0 for a reversed one; NaN without both kinds of row.
    """
    known = ~np.isnan(flags)
    hit, miss = scores[known & (flags > 0.5)], np.sort(scores[known & (flags <= 0.5)])
    if not len(hit) or not len(miss):
        return float("nan")
    below = np.searchsorted(miss, hit, "left")  # (hits,) unflagged rows scored lower than each flagged one
    ties = np.searchsorted(miss, hit, "right") - below
    return float((below + 0.5 * ties).sum() / (len(hit) * len(miss)))
