"""Training the latent world model (``worldmodel.latent``) from episodes of camera frames.

The loss is TD-MPC2's without the value: from the encoding of a frame stack, every member rolls the
latent ``L`` steps forward under the logged actions, and at each step j (weighted ``rho**j``)
- consistency: its latent (keypoints and normalised part; the zone map is carried) matches the encoder's
  stop-gradient encoding of the stack that followed;
- reward: the reward head on its latent matches the logged reward (standardised);
- breach: the breach head on its latent predicts the logged geofence-breach flag (binary cross-entropy; steps
  whose flag is unknown, from logs written before the flag was, do not train it).
and the heads also read the first encoding itself. ``warmup`` steps first train the encoder and the
reward head alone; ``calibrate`` refreshes the encoder's batch statistics and the latent step scale.
Nothing reads the true state: ``collect_episodes`` returns it apart, for evaluation only.

The geofence-breach flag is telemetry a real fleet logs: the autopilot checks its GNSS position against
the fence and reports a breach (MAVLink's ``FENCE_STATUS.breach_status``), so a camera-only planner can
learn where the fence is from it. Here it is ``info["violation"]`` of the step's new state, which ``collect``
logs as the ``violations`` column (``worldmodel.data.schema.VIOLATIONS``).

Dimensions: ``Ep`` episodes, ``T`` most steps in an episode, ``B`` batch, ``L`` rollout steps, ``E``
members, ``F`` stacked frames, ``H, W, C`` frame shape, ``Z`` latent, ``A`` action.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from worldmodel.data.batch import UNKNOWN
from worldmodel.data.images import ImageTransitions
from worldmodel.envs.camera import STATE_INFO, PixelNav2DEnv
from worldmodel.envs.collect import VIOLATION_INFO
from worldmodel.latent import LatentWorldModel


@dataclass(frozen=True)
class Episodes:
    """Ep episodes of camera frames, padded to T steps; step t goes from frame t to frame t+1.

    Attributes:
        frames: (Ep, T+1, H, W, C) uint8; frame ``lengths[i]`` is episode i's last, later ones are padding.
        actions: (Ep, T, A) float32.
        rewards: (Ep, T) float32, the reward of arriving at frame t+1.
        breach: (Ep, T) float32, the geofence-breach flag at frame t+1: 1.0 breach, 0.0 none, NaN unknown (not
            logged); never a guessed False.
        lengths: (Ep,) int64 steps in each episode, >= 1.
    """

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    breach: np.ndarray
    lengths: np.ndarray

    def __post_init__(self) -> None:
        ep, t1 = self.frames.shape[:2]
        if self.frames.dtype != np.uint8 or self.frames.ndim != 5:
            raise ValueError(f"frames must be (Ep, T+1, H, W, C) uint8, got {self.frames.dtype} {self.frames.shape}")
        for name, shape in (("actions", (ep, t1 - 1)), ("rewards", (ep, t1 - 1)), ("breach", (ep, t1 - 1)),
                            ("lengths", (ep,))):
            if getattr(self, name).shape[:len(shape)] != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {shape} first")
        if not ((self.lengths >= 1) & (self.lengths <= t1 - 1)).all():
            raise ValueError(f"lengths must be in 1..T={t1 - 1}, got {self.lengths.min()}..{self.lengths.max()}")

    def __len__(self) -> int:
        return len(self.lengths)

    def valid(self) -> np.ndarray:
        """(Ep, T) True at real steps."""
        return np.arange(self.actions.shape[1])[None] < self.lengths[:, None]


def held_out_count(count: int, share: float) -> int:
    """How many of ``count`` episodes to hold out of training: the last ``share`` of them, at least one of two or
    more, never all."""
    return min(max(1, round(share * count)), count - 1) if count > 1 else 0


def episodes_from_logs(data: ImageTransitions) -> Episodes:
    """Image log rows (grouped by episode, in time order, as ``collect`` writes them) as Episodes, with the logged
    breach flags (``rows.violations``; NaN where unknown)."""
    ids, starts, lengths = np.unique(data.rows.eps_id, return_index=True, return_counts=True)
    order = np.argsort(starts)
    starts, lengths = starts[order], lengths[order]
    ep, t = len(starts), int(lengths.max())
    frames = np.zeros((ep, t + 1, *data.image_shape), np.uint8)
    actions = np.zeros((ep, t, data.rows.act_dim), np.float32)
    rewards = np.zeros((ep, t), np.float32)
    breach = np.full((ep, t), np.nan, np.float32)  # padding stays unknown as well as invalid
    step = np.arange(len(data)) - np.repeat(starts, lengths)  # (B,) index within the episode
    episode = np.repeat(np.arange(ep), lengths)
    frames[episode, step] = data.obs_image
    frames[episode, step + 1] = data.new_obs_image  # the last row's is the episode's final frame
    actions[episode, step], rewards[episode, step] = data.rows.actions, data.rows.rewards
    breach[episode, step] = np.where(data.rows.violations == UNKNOWN, np.nan, data.rows.violations)
    return Episodes(frames, actions, rewards, breach, lengths.astype(np.int64))


def collect_episodes(count: int, seed: int = 0, steps: int = 200, env_kwargs: dict[str, Any] | None = None,
                     hold: int = 1) -> tuple[Episodes, np.ndarray]:
    """Random play on PixelNav2D with the geofence-breach flag logged: ``count`` episodes of at most ``steps``,
    each uniform random action held for ``hold`` steps.

    Many short episodes rather than few long ones: each episode is one scene (goal and zones), and a model
    trained on 450 scenes learnt them by heart (reward RMSE 1.5 on them, 2.9 on new ones). Held actions
    reach the speeds a planner drives at, which independent draws (a random walk of tiny steps) do not.

    Returns:
        (Episodes, states (Ep, T+1, 6) float32 true Nav2D states for evaluation only, zeros after the end).
    """
    if count < 1 or steps < 1:
        raise ValueError(f"count and steps must be >= 1, got {count} and {steps}")
    rng = np.random.default_rng(seed)
    env = PixelNav2DEnv(**(env_kwargs or {}))
    frames = np.zeros((count, steps + 1, *env.camera.shape), np.uint8)
    states = np.zeros((count, steps + 1, 6), np.float32)
    if hold < 1:
        raise ValueError(f"hold must be >= 1, got {hold}")
    blocks = rng.uniform(-1, 1, size=(count, -(-steps // hold), 2)).astype(np.float32)
    actions = np.repeat(blocks, hold, axis=1)[:, :steps]  # (Ep, T, A)
    rewards, breach = np.zeros((count, steps), np.float32), np.zeros((count, steps), np.float32)
    lengths = np.full(count, steps, np.int64)
    for i in range(count):  # data collection, one env at a time: not a hot path
        frames[i, 0], info = env.reset(seed=int(rng.integers(2**31)))
        states[i, 0] = info[STATE_INFO]
        for t in range(steps):
            frames[i, t + 1], rewards[i, t], done, _, info = env.step(actions[i, t])
            states[i, t + 1], breach[i, t] = info[STATE_INFO], info[VIOLATION_INFO]
            if done:
                lengths[i] = t + 1
                break
    return Episodes(frames, actions, rewards, breach, lengths), states


def frame_stacks(frames: np.ndarray, episode: np.ndarray, t: np.ndarray, count: int) -> np.ndarray:
    """The last ``count`` frames up to step t of each row, the first repeated before an episode's start.

    Args: frames (Ep, T+1, H, W, C); episode, t: (...) int index arrays. Returns (..., F, H, W, C).
    """
    times = np.maximum(t[..., None] + np.arange(1 - count, 1), 0)  # (..., F)
    return frames[episode[..., None], times]


@dataclass(frozen=True)
class LatentTrainConfig:
    """How the latent model trains; saved with it."""

    steps: int = 6000
    """Gradient steps, at most (about 21 minutes on this project's 2-core CPU: held-out losses still fall at 3,000,
    the reward's from 0.051 to 0.004 by 6,000)."""
    cpu_seconds: float | None = None
    """Stop sooner once training has spent this much CPU time (this process's, all threads)."""
    batch: int = 64
    """B, sub-sequences per step."""
    horizon: int = 3
    """L, latent rollout steps each sub-sequence trains (TD-MPC2's 3)."""
    rho: float = 0.5
    """Weight of rollout step j is rho**j: later steps inherit earlier steps' errors."""
    lr: float = 1e-3
    """Adam learning rate."""
    consistency: float = 20.0
    """Weight of the latent consistency loss (TD-MPC2's)."""
    reward: float = 1.0
    """Weight of the reward loss (standardised rewards)."""
    breach: float = 1.0
    """Weight of the geofence-breach loss."""
    zone_prior: float = 1.0
    """Weight of the zone map's mean (its cells are in [0, 1]): a colour is a zone only where breach flags say
    so, and one they never reach, such as the goal's seen under the agent (random play seldom arrives), reads
    clear rather than whatever the map's initialisation makes of it."""
    warmup: int = 0
    """First steps that train the encoder and reward head alone on each stack's reward (L = 0): the latent
    first learns to see the agent and the goal, which consistency alone would let collapse."""
    grad_clip: float = 20.0
    """Gradient norm clip."""
    sequences: int = 16
    """Recurrent models: sequences per step (each ``burn_in + window + horizon`` frame stacks)."""
    window: int = 16
    """Recurrent models: steps of each sequence whose filtered latents train."""
    burn_in: int = 8
    """Recurrent models: steps filtered before the window, not trained, so the filter has settled; a sequence
    that starts its episode trains from its first step (its first latent is exact: the agent is at rest)."""
    seed: int = 0
    """Seed of batch sampling and initialisation."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "horizon", "sequences", "window"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.burn_in < 0:
            raise ValueError(f"burn_in must be >= 0, got {self.burn_in!r}")
        if not self.zone_prior >= 0:
            raise ValueError(f"zone_prior must be >= 0, got {self.zone_prior!r}")
        if not 0 < self.rho <= 1 or not self.lr > 0:
            raise ValueError(f"rho must be in (0, 1] and lr > 0, got rho={self.rho}, lr={self.lr}")


@dataclass(frozen=True)
class LatentBatch:
    """B sub-sequences of L steps: stacks (L+1, B, F, H, W, C) uint8, actions (L, B, A), and for the step that
    arrived at each stack rewards (L+1, B), breach (L+1, B) float (NaN: unknown) and valid (L+1, B) float (0 before
    an episode's start and past its end)."""

    stacks: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    breach: torch.Tensor
    valid: torch.Tensor
    first: torch.Tensor
    """(B,) bool: the sub-sequence starts its episode (its first stack is the episode's first frame)."""


def sample_batch(data: Episodes, frames: int, batch: int, horizon: int, rng: np.random.Generator,
                 before: int = 0) -> LatentBatch:
    """B sub-sequences starting at uniform steps of uniform episodes (steps past an end are masked); with
    ``before``, starts are drawn from ``before`` steps ahead of each episode too and moved to its start, so
    that many more sequences start an episode (``first`` says which)."""
    episode = rng.integers(len(data), size=batch)  # (B,)
    start = np.maximum((rng.random(batch) * (data.lengths[episode] + before)).astype(np.int64) - before, 0)
    t = start[None] + np.arange(horizon + 1)[:, None]  # (L+1, B)
    ep = np.broadcast_to(episode, t.shape)
    arrived = t - 1  # (L+1, B): the step that arrived at each stack
    valid = (arrived >= 0) & (arrived < data.lengths[episode][None])
    step = np.clip(arrived, 0, data.actions.shape[1] - 1)
    t = np.minimum(t, data.frames.shape[1] - 1)
    as_t = torch.from_numpy
    return LatentBatch(as_t(frame_stacks(data.frames, ep, t, frames)), as_t(data.actions[ep[1:], step[1:]]),
                       as_t(data.rewards[ep, step]), as_t(data.breach[ep, step]),
                       as_t(valid.astype(np.float32)), as_t(start == 0))


def sample_for(model: LatentWorldModel, data: Episodes, cfg: "LatentTrainConfig", rng: np.random.Generator,
               horizon: int | None = None) -> LatentBatch:
    """The batch ``model``'s loss trains on: ``cfg.batch`` sub-sequences of ``horizon`` (default ``cfg.horizon``)
    steps, or for a recurrent model ``cfg.sequences`` sequences long enough for its burn-in, window and
    rollouts (``horizon`` 0: the warm-up's single stacks, either kind)."""
    horizon = cfg.horizon if horizon is None else horizon
    if model.cfg.recurrent and horizon:
        return sample_batch(data, model.cfg.frames, cfg.sequences, cfg.burn_in + cfg.window + horizon - 1, rng,
                            before=cfg.burn_in)
    return sample_batch(data, model.cfg.frames, cfg.batch, horizon, rng)


def loss_for(model: LatentWorldModel, b: LatentBatch, cfg: "LatentTrainConfig", pos_weight: float = 1.0
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """``filter_loss`` for a recurrent model's sequences, ``latent_loss`` otherwise (and for the warm-up)."""
    if model.cfg.recurrent and len(b.actions):
        return filter_loss(model, b, cfg, pos_weight)
    return latent_loss(model, b, cfg, pos_weight)


def latent_loss(model: LatentWorldModel, b: LatentBatch, cfg: LatentTrainConfig, pos_weight: float = 1.0
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """TD-MPC2's loss (module docstring): (total, its parts as floats).

    The heads also read the first encoding itself (step 0, what arrived there): the encoder's most direct
    route to what the rewards say, which a rollout through untrained dynamics hardly passes on.
    """
    n, bsz = b.actions.shape[:2]
    z = model.encode(b.stacks[0])  # (B, Z)
    if n:
        with torch.no_grad():  # the consistency target is the encoder's own, without gradient
            target = model.encode(b.stacks[1:].flatten(0, 1)).view(n, bsz, -1)  # (L, B, Z)
    weights = cfg.rho ** torch.arange(n + 1, dtype=torch.float32)[:, None] * b.valid  # (L+1, B)
    weights = weights / (weights[1:] if n else weights).sum().clamp_min(1.0)
    reward_n = model.reward_norm(b.rewards[..., None])[..., 0]  # (L+1, B)
    pos = torch.tensor(pos_weight)
    known = ~torch.isnan(b.breach)  # (L+1, B): an unknown flag trains nothing, rather than counting as no breach
    flags, breach_weights = torch.nan_to_num(b.breach), weights * known

    def heads(latent: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        return head_losses(model, latent, reward_n[j], flags[j], weights[j], breach_weights[j], pos)

    reward, breach = heads(z[None], 0)
    zones = z[:, model.cfg.moving:].mean()  # the map's mean: ``LatentTrainConfig.zone_prior``
    consistency = torch.zeros(())
    for j in range(1, n + 1):  # a few rollout steps; every member and row advances at once
        z = model.next(z, b.actions[j - 1])  # (E, B, Z)
        moved = (z - target[j - 1])[..., :model.cfg.moving]  # (E, B, moving): the zone map is carried, not predicted
        consistency = consistency + (moved.square().mean(-1) * weights[j]).sum(-1).mean()
        # The heads train on the members' latents (what planning reads) and on the encoder's.
        for latent in (z, target[j - 1][None]):
            r, v = heads(latent, j)
            reward, breach = reward + r, breach + v
    total = cfg.consistency * consistency + cfg.reward * reward + cfg.breach * breach + cfg.zone_prior * zones
    return total, {"consistency": consistency.item(), "reward": reward.item(), "breach": breach.item()}


def head_losses(model: LatentWorldModel, latent: torch.Tensor, reward_n: torch.Tensor, flags: torch.Tensor,
                weights: torch.Tensor, breach_weights: torch.Tensor, pos: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted reward and breach losses of latents (X, R, Z) against standardised rewards and flags (R,): summed
    over the R rows with ``weights`` (R,) (``breach_weights`` for the flag), mean over X."""
    reward = (model.reward_head(latent) - reward_n).square()
    # The breach head reads the keypoints where they are: its loss trains the zone map and the head, never moves
    # the keypoints (the reward and consistency place them; a rare flag's heavy weight would pull them about).
    points = model.cfg.points
    logit = model.breach_logit(torch.cat([latent[..., :points].detach(), latent[..., points:]], -1))
    breach = F.binary_cross_entropy_with_logits(logit, flags.expand_as(logit), pos_weight=pos, reduction="none")
    return (reward * weights).sum(-1).mean(), (breach * breach_weights).sum(-1).mean()


def filter_loss(model: LatentWorldModel, b: LatentBatch, cfg: LatentTrainConfig, pos_weight: float = 1.0
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """A recurrent model's loss on sequences (``sample_for``): (total, its parts as floats).

    The encoder reads every stack of the sequences in one call; the filter (``LatentWorldModel.correct``)
    runs through them, gradients flowing back through time; from every filtered latent of the window the
    members roll ``cfg.horizon`` steps forward at once, and the loss is ``latent_loss``'s: their latents match
    the stop-gradient encodings of the stacks that followed (the raw encodings, never the filtered ones: a
    filter that ignored its frames would match its own predictions perfectly), and the heads read the
    filtered latents and the members' ones. Steps of the burn-in train nothing unless the sequence starts its
    episode, and never the encoder (their stacks are encoded without gradient). Shapes: ``T`` filtered steps
    (burn-in and window), ``B`` sequences, ``h`` horizon.
    """
    h, m = cfg.horizon, model.cfg.moving
    bsz = b.actions.shape[1]
    steps = b.stacks.shape[0] - h  # T
    burn = min(cfg.burn_in, steps)

    def encode(stacks: torch.Tensor) -> torch.Tensor:  # (X, B, F, H, W, C) -> (X, B, Z)
        return model.encode(stacks.flatten(0, 1)).view(len(stacks), bsz, -1)

    # The encoder learns from the window's stacks; the burn-in's only start the filter and the last h are only
    # targets: encoded without gradient, which halves the cost of a step.
    with torch.no_grad():
        burn_in, tail = encode(b.stacks[:burn]), encode(b.stacks[steps:])
    encoded = torch.cat([burn_in, encode(b.stacks[burn:steps]), tail])  # (T+h, B, Z)
    latents = [encoded[0]]
    for t in range(1, steps):  # the filter, step by step: every sequence at once
        latents.append(model.correct(model.next(latents[-1], b.actions[t - 1]).mean(0), encoded[t]))
    z = torch.stack(latents)  # (T, B, Z)
    trained = ((torch.arange(steps) >= cfg.burn_in)[:, None] | b.first[None]).float()  # (T, B)
    target = encoded.detach()[..., :m]  # (T+h, B, moving)
    reward_n = model.reward_norm(b.rewards[..., None])[..., 0]  # (T+h, B)
    known = ~torch.isnan(b.breach)
    flags, pos = torch.nan_to_num(b.breach), torch.tensor(pos_weight)
    # weights[j] for the latents reached j steps after each filtered one (j = 0: the filtered latents themselves)
    weights = torch.stack([cfg.rho ** j * b.valid[j:j + steps] * trained for j in range(h + 1)])  # (h+1, T, B)
    weights = weights / weights[1:].sum().clamp_min(1.0)
    rows = lambda x: x.flatten(0, 1)  # noqa: E731  (T, B, ...) -> (T*B, ...)

    def heads(latent: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        return head_losses(model, latent, rows(reward_n[j:j + steps]), rows(flags[j:j + steps]), rows(weights[j]),
                           rows(weights[j] * known[j:j + steps]), pos)

    reward, breach = heads(rows(z)[None], 0)
    consistency, y = torch.zeros(()), rows(z)
    for j in range(1, h + 1):  # every filtered latent rolls forward at once
        y = model.next(y, rows(b.actions[j - 1:j - 1 + steps]))  # (E, T*B, Z)
        moved = (y[..., :m] - rows(target[j:j + steps])).square().mean(-1)  # (E, T*B)
        consistency = consistency + (moved * rows(weights[j])).sum(-1).mean()
        r, v = heads(y, j)
        reward, breach = reward + r, breach + v
    zones = encoded[burn:steps, :, m:].mean()  # the map's mean over the stacks the encoder learns from
    total = cfg.consistency * consistency + cfg.reward * reward + cfg.breach * breach + cfg.zone_prior * zones
    return total, {"consistency": consistency.item(), "reward": reward.item(), "breach": breach.item()}


@dataclass(frozen=True)
class LatentTrainReport:
    """What a training run did: steps, wall and CPU seconds (this process's), the last step's loss parts, and the
    steps whose breach flag was known (0: the breach head learned nothing, e.g. from logs written before the flag
    was), every worker's."""

    steps: int
    seconds: float
    cpu_seconds: float
    losses: dict[str, float]
    breach_flags: int = 0
    workers: int = 1
    """Processes that trained it data-parallel (1: this one alone)."""


class LatentLoss(torch.nn.Module):
    """``loss_for`` as a module's forward: what ``DistributedDataParallel`` wraps, so that the backward through it
    averages the gradients of every worker's batch."""

    def __init__(self, model: LatentWorldModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, b: LatentBatch, cfg: LatentTrainConfig, pos_weight: float) -> tuple[torch.Tensor,
                                                                                          dict[str, float]]:
        return loss_for(self.model, b, cfg, pos_weight)


def train_latent(model: LatentWorldModel, data: Episodes, cfg: LatentTrainConfig,
                 on_log: Callable[[int, float, dict[str, float]], None] | None = None,
                 log_every: int = 100) -> LatentTrainReport:
    """Fit ``model`` to ``data`` for ``cfg.steps`` steps (or its CPU time), then ``calibrate`` it (eval mode).

    ``on_log(step, cpu_seconds, loss_parts)`` is called every ``log_every`` steps (a caller checkpoints there).

    Data parallel when a ``torch.distributed`` process group is up (Ray Train's workers: ``learners.latent_train``):
    each process trains on its own episodes, ``DistributedDataParallel`` averages the gradients, the reward scale
    and the breach weight come from every worker's episodes, and all stop at the same step (the first to reach
    its CPU budget stops them all). Batches are drawn with ``cfg.seed`` plus the process's rank.
    """
    group = _Group()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed + group.rank)
    valid = data.valid()
    with torch.no_grad():
        rewards = torch.from_numpy(data.rewards[valid]).double()
        count, total, squares = group.sum([len(rewards), rewards.sum(), (rewards ** 2).sum()])
        mean = total / max(count, 1.0)
        std = max((squares / max(count, 1.0) - mean ** 2), 0.0) ** 0.5
        model.reward_norm.mean.fill_(mean)
        model.reward_norm.std.fill_(std if std >= 1e-6 else 1.0)
    flags = data.breach[valid]
    # Breaches are rare in random play: weight them up to balance, within reason (unknown flags count neither way).
    clear, breached = group.sum([(flags == 0).sum(), (flags == 1).sum()])
    pos_weight = float(np.clip(clear / max(breached, 1), 1.0, 10.0))
    loss_of = group.wrap(LatentLoss(model))
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    warm = dataclasses.replace(cfg, breach=0.0)
    start, cpu_start, parts, step = time.perf_counter(), time.process_time(), {}, 0
    model.train()
    while step < cfg.steps and not (cfg.cpu_seconds is not None  # every process has the same cfg
                                    and group.any(time.process_time() - cpu_start >= cfg.cpu_seconds)):
        step += 1
        batch = sample_for(model, data, cfg, rng, 0 if step <= cfg.warmup else None)
        loss, parts = loss_of(batch, cfg if step > cfg.warmup else warm, pos_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimiser.step()
        if on_log is not None and step % log_every == 0:
            on_log(step, time.process_time() - cpu_start, parts)
    calibrate(model, data, rng)
    return LatentTrainReport(step, time.perf_counter() - start, time.process_time() - cpu_start, parts,
                             int(group.sum([(~np.isnan(flags)).sum()])[0]), group.size)


class _Group:
    """The ``torch.distributed`` process group ``train_latent`` runs in, or this process alone."""

    def __init__(self) -> None:
        self.on = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if self.on else 0
        self.size = torch.distributed.get_world_size() if self.on else 1

    def sum(self, values: list[Any]) -> list[float]:
        """Each value summed over the processes."""
        return self.total(torch.tensor([float(v) for v in values], dtype=torch.float64)).tolist()

    def total(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` summed over the processes (a new tensor)."""
        x = x.clone()
        if self.on:
            torch.distributed.all_reduce(x)
        return x

    def any(self, flag: bool) -> bool:
        """Whether any process's ``flag`` is set (each step: every process stops at the same one)."""
        return self.sum([flag])[0] > 0 if self.on else flag

    def wrap(self, loss: LatentLoss) -> torch.nn.Module:
        """``loss`` under ``DistributedDataParallel`` in a process group (its backward averages the gradients)."""
        if not self.on:
            return loss
        # find_unused_parameters: the warm-up steps leave the dynamics (and a recurrent model's gain) untouched
        return torch.nn.parallel.DistributedDataParallel(loss, find_unused_parameters=True)


@torch.no_grad()
def calibrate(model: LatentWorldModel, data: Episodes, rng: np.random.Generator, rows: int = 2048,
              chunk: int = 256) -> None:
    """Refresh what the model measures of real images, in eval mode afterwards: the encoder's batch
    statistics (averaged over ``rows`` stacks: the moving averages lag weights that training still moves)
    and ``step_std``, the std of one-step latent changes. In a process group (``train_latent``'s data-parallel
    training), over every process's stacks: each process's chunk averages and change moments are combined."""
    group = _Group()
    episode = rng.integers(len(data), size=rows)
    t = (rng.random(rows) * data.lengths[episode]).astype(np.int64)
    norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    model.train()
    for norm in norms:  # a plain average over the chunks below
        norm.reset_running_stats()
        norm.momentum = None
    for rows_now in np.array_split(np.arange(rows), max(1, rows // chunk)):
        model.encode(torch.from_numpy(frame_stacks(data.frames, episode[rows_now], t[rows_now], model.cfg.frames)))
    for norm in norms:
        norm.momentum = 0.1
        for stats in (norm.running_mean, norm.running_var):  # every process ran as many chunks
            stats.copy_(group.total(stats) / group.size)
    model.eval()
    now = model.encode(torch.from_numpy(frame_stacks(data.frames, episode, t, model.cfg.frames)))
    after = model.encode(torch.from_numpy(frame_stacks(data.frames, episode, t + 1, model.cfg.frames)))
    change = (after - now).double()  # (rows, Z)
    count = group.total(torch.tensor(float(len(change)), dtype=torch.float64))
    total, squares = group.total(change.sum(0)), group.total(change.square().sum(0))
    std = ((squares - total.square() / count) / (count - 1)).clamp_min(0.0).sqrt().float()  # unbiased, as .std
    model.step_std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std))
