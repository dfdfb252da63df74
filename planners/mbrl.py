"""Model-based RL, PETS style: random episodes, then alternate training the world model and planning with it.

Episode 0..R-1 act at random. Before every later episode a world model (dynamics
and reward) is trained from scratch on all transitions so far, and one episode is
run closed loop with a planner that plans on the learned dynamics AND the learned
reward; the environment's reward is only logged, never planned with. Optional
evaluation episodes at the end measure the final agent over several start states
without adding to its data (one episode's return depends strongly on where it starts).

Small data sets: ``train_world_model`` splits whole episodes into train /
validation / test, which needs several episodes, while MBRL starts from one. With
few episodes each is cut into time-contiguous chunks that are split as if they were
episodes (``worldmodel.splits.chunk_episodes``).

Shapes: ``S`` state, ``A`` action, ``H`` horizon, ``B`` transitions.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from planners import PlanConfig, make_planner, shift_plan
from planners.config import MBRLConfig
from planners.base import BasePlanner
from planners.cem import CEMConfig, CEMPlanner
from planners.evaluate import build_objective
from worldmodel.data import TrajectoryWriter, Transitions
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.collect import collect
from worldmodel.model import WorldModel
from worldmodel.splits import CHUNK_STEPS, chunk_episodes
from worldmodel.training import train_world_model

AGENT_ID = "mbrl-0000"
"""Agent id of every logged row."""
RANDOM, PLANNED, EVAL = "random", "planned", "eval"
"""Episode kinds: random actions; planned and learned from; planned by the final model, not learned from."""


@dataclass(frozen=True)
class EpisodeRow:
    """One episode of the loop."""

    index: int
    """Episode number, from 0."""
    kind: str
    """'random', 'planned' or 'eval'."""
    steps: int
    """Env steps in this episode."""
    env_steps: int
    """Env steps learned from so far, this episode included (the x axis of a learning curve); for
    eval episodes, all the steps the final model was trained on."""
    ret: float
    """Undiscounted return of the episode (the env's reward)."""
    success: bool | None
    """The env's final ``is_success``, None when it reports none."""
    train_seconds: float
    """Wall time spent training the model this episode planned with (0 for random episodes and for
    eval episodes after the first, which share its model)."""
    plan_ms_mean: float
    """Mean wall time of one planning call (0 for random episodes)."""
    model_r2_min: float | None
    """Held-out R^2 of the dynamics (worst state dimension), None for random episodes."""


@dataclass
class MBRLResult:
    """The loop's episodes and when (if ever) the target return was reached."""

    env_id: str
    rows: list[EpisodeRow]
    """The random and planned episodes, in order."""
    evals: list[EpisodeRow]
    """Evaluation episodes of the final model (empty unless asked for)."""
    target_return: float | None
    steps_to_target: int | None
    """Cumulative env steps at the end of the first episode whose return >= target_return."""
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    """The resolved configuration of the run."""

    @property
    def returns(self) -> list[float]:
        return [r.ret for r in self.rows]

    @property
    def eval_mean_return(self) -> float | None:
        return float(np.mean([r.ret for r in self.evals])) if self.evals else None

    def to_dict(self) -> dict[str, Any]:
        return {"env": self.env_id, "rows": [dataclasses.asdict(r) for r in self.rows],
                "returns": self.returns, "evals": [dataclasses.asdict(r) for r in self.evals],
                "eval_mean_return": self.eval_mean_return, "target_return": self.target_return,
                "steps_to_target": self.steps_to_target, "seconds": round(self.seconds, 2),
                "settings": self.settings}


def pets_cem(samples: int, elites: int | None = None) -> CEMConfig:
    """PETS' CEM for ``samples`` K: white noise at half the action range, refitting to the top 10% (or
    ``elites``). The loop plans each step from scratch with several rounds, where iCEM's wide coloured
    noise (``CEMConfig``'s default, for one warm-started round) has not been tuned."""
    return CEMConfig(elites=elites if elites is not None else max(1, samples // 10), noise_beta=0.0, init_std=0.5)


def _planner(name: str, model: WorldModel, cfg: PlanConfig, cem: CEMConfig | None) -> BasePlanner:
    """A planner on the model's dynamics and LEARNED reward."""
    objective = build_objective(model, "learned")
    low, high = torch.tensor(model.spec.act_low), torch.tensor(model.spec.act_high)
    if name == "cem":
        return CEMPlanner(model.dynamics, objective, low, high, cfg, cem=cem or pets_cem(cfg.samples))
    return make_planner(name, model.dynamics, objective, low, high, cfg)


def episode_seed(seed: int, index: int) -> int:
    """Env reset seed of episode ``index``: distinct across (seed, index) pairs."""
    return int(np.random.SeedSequence((seed, index)).generate_state(1)[0])


def run_planned_episode(env_id: str, planner: BasePlanner, index: int, seed: int, model_version: str,
                        progress: bool = False) -> tuple[Transitions, bool | None, list[float]]:
    """One closed-loop episode of a single env, planning every step with a warm-started plan.

    Returns:
        The episode's transitions (eps_id ``f"{AGENT_ID}-{seed}-{index}"``), its final
        ``is_success`` (None when the env reports none) and each planning call's wall time (ms).
    """
    env = make_env(env_id)
    steps: list[tuple[Any, ...]] = []  # (obs, action, reward, new_obs, terminated, truncated, timestamp)
    plan_ms: list[float] = []
    success: bool | None = None
    try:
        obs, info = env.reset(seed=episode_seed(seed, index))
        warm_start: torch.Tensor | None = None
        bar = tqdm(desc=f"episode {index}", total=env.spec.max_episode_steps if env.spec else None, unit="step",
                   disable=not progress, leave=False)
        done = False
        while not done:
            result = planner.plan(torch.as_tensor(obs, dtype=torch.float32)[None], warm_start=warm_start)
            plan_ms.append(result.elapsed_ms)
            warm_start = shift_plan(result.plan)
            action = result.actions[0].detach().cpu().numpy()
            new_obs, reward, terminated, truncated, info = env.step(action)
            now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
            steps.append((obs, action, reward, new_obs, terminated, truncated, np.datetime64(now, "us")))
            obs, done = new_obs, bool(terminated or truncated)
            bar.update()
        bar.close()
        if "is_success" in info:
            success = bool(info["is_success"])
    finally:
        env.close()
    obs_, actions, rewards, new_obs_, terminateds, truncateds, times = (np.asarray(c) for c in zip(*steps))
    data = Transitions.build(obs_, actions, rewards, new_obs_, terminateds, truncateds,
                             eps_id=[f"{AGENT_ID}-{seed}-{index}"] * len(steps), agent_id=AGENT_ID,
                             t=np.arange(len(steps)), model_version=model_version, timestamp=times)
    return data, success, plan_ms


@dataclass
class _Loop:
    """One run of the loop: its settings, and the rows reported so far (each also logged and announced)."""

    cfg: MBRLConfig
    progress: bool
    writer: TrajectoryWriter | None
    on_episode: Callable[[EpisodeRow], None] | None
    rows: list[EpisodeRow] = field(default_factory=list)
    evals: list[EpisodeRow] = field(default_factory=list)

    @property
    def chunk(self) -> int:
        """Steps per chunk of the split (no shorter than a recurrent model's sequences)."""
        return max(CHUNK_STEPS, self.cfg.train.seq_len) if self.cfg.model.dynamics == "gru" else CHUNK_STEPS

    def finish(self, row: EpisodeRow, part: Transitions | None) -> None:
        """Report one episode; ``part`` is its data when it is learned from (then also logged)."""
        (self.rows if part is not None else self.evals).append(row)
        if self.writer is not None and part is not None:
            self.writer.write(part)
        if self.on_episode is not None:
            self.on_episode(row)

    def train(self, data: Transitions, i: int) -> tuple[WorldModel, float]:
        """A model trained from scratch on ``data`` for episode ``i``, and the seconds it took."""
        tic = time.perf_counter()
        cfg = self.cfg
        spec = space_spec(make_env(cfg.env_id), cfg.env_id)
        model = train_world_model(chunk_episodes(data, self.chunk), spec, cfg.model,
                                  dataclasses.replace(cfg.train, seed=cfg.seed + i), progress=self.progress)
        return model, round(time.perf_counter() - tic, 3)

    def play(self, model: WorldModel, i: int) -> tuple[Transitions, bool | None, float]:
        """Episode ``i`` planned on ``model``: its data, success and mean planning ms."""
        cfg = self.cfg
        plan = _planner(cfg.planner, model, dataclasses.replace(cfg.plan, seed=cfg.seed + i), cfg.cem)
        part, success, plan_ms = run_planned_episode(cfg.env_id, plan, i, cfg.seed, f"mbrl-{i}", self.progress)
        return part, success, round(float(np.mean(plan_ms)), 3)

    def random_episodes(self) -> Transitions:
        """Episodes 0..random_episodes-1 at random (eps_id ``f"{AGENT_ID}-{seed}-{i}"``, as planned ones)."""
        data = collect(self.cfg.env_id, self.cfg.random_episodes, seed=self.cfg.seed, agent_id=AGENT_ID,
                       num_envs=1, progress=self.progress)
        env_steps = 0
        for i, eps in enumerate(dict.fromkeys(data.eps_id.tolist())):
            part = data.select(data.eps_id == eps)
            env_steps += len(part)
            # collect keeps no infos, so random episodes report no success.
            self.finish(EpisodeRow(i, RANDOM, len(part), env_steps, float(part.rewards.sum()), None, 0.0, 0.0,
                                   None), part)
        return data

    def planned_episode(self, data: Transitions, i: int) -> Transitions:
        """Train on ``data``, plan episode ``i``; returns ``data`` with the episode added."""
        model, train_seconds = self.train(data, i)
        part, success, plan_ms = self.play(model, i)
        env_steps = len(data) + len(part)
        self.finish(EpisodeRow(i, PLANNED, len(part), env_steps, float(part.rewards.sum()), success, train_seconds,
                               plan_ms, model.metrics["dynamics"]["r2_min"]), part)
        return Transitions.concat([data, part])

    def eval_episodes(self, data: Transitions) -> None:
        """The eval episodes (numbered after the others), planned by one model trained on all of ``data``."""
        first = self.cfg.episodes
        model, train_seconds = self.train(data, first)
        for i in range(first, first + self.cfg.eval_episodes):
            part, success, plan_ms = self.play(model, i)
            self.finish(EpisodeRow(i, EVAL, len(part), len(data), float(part.rewards.sum()), success,
                                   train_seconds if i == first else 0.0, plan_ms,
                                   model.metrics["dynamics"]["r2_min"]), None)

    def settings(self) -> dict[str, Any]:
        """The resolved configuration of the run, as saved with its result."""
        cfg = self.cfg
        return {"env": cfg.env_id, "episodes": cfg.episodes, "planner": cfg.planner,
                "random_episodes": cfg.random_episodes, "eval_episodes": cfg.eval_episodes, "seed": cfg.seed,
                "seeds": "episode i trains and plans with seed + i", "plan": dataclasses.asdict(cfg.plan),
                "model": cfg.model.to_dict(), "train": cfg.train.to_dict(),
                "cem": dataclasses.asdict(cfg.cem) if cfg.cem else None, "chunk_steps": self.chunk}


def run_mbrl(cfg: MBRLConfig, log_dir: str | None = None, progress: bool = False,
             on_episode: Callable[[EpisodeRow], None] | None = None) -> MBRLResult:
    """Run the PETS loop: ``cfg.random_episodes`` random episodes, then planned ones, then evaluation.

    Args:
        cfg: the run's settings (checked when it was built); its seed fixes everything, so a run
            repeats exactly on the same machine and software (the loop is chaotic: float rounding
            that differs elsewhere changes it).
        log_dir: when given, every learned-from episode is also appended there with TrajectoryWriter.
        progress: show progress bars on stderr.
        on_episode: called with each row as soon as its episode ends.

    Returns:
        One row per episode and the env steps it took to reach ``cfg.target_return``.
    """
    start = time.perf_counter()
    space_spec(make_env(cfg.env_id), cfg.env_id)  # a bad env id or space fails before any work
    writer = TrajectoryWriter(log_dir, env_id=cfg.env_id) if log_dir else None
    loop = _Loop(cfg, progress, writer, on_episode)
    # Random episodes first, then one planned episode per retraining, then the final model's evaluation.
    data = loop.random_episodes()
    for i in range(cfg.random_episodes, cfg.episodes):
        data = loop.planned_episode(data, i)
    if cfg.eval_episodes:
        loop.eval_episodes(data)
    target = cfg.target_return
    reached = [r.env_steps for r in loop.rows if target is not None and r.ret >= target]
    return MBRLResult(cfg.env_id, loop.rows, loop.evals, target, reached[0] if reached else None,
                      time.perf_counter() - start, loop.settings())
