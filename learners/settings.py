"""Learner, scheduler and policy-training defaults, in plain Python so the command line reads them without Ray."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from worldmodel.envs import NAV2D_ID

DEFAULT_NAME = "fleetwm-retrain-scheduler"
"""Name of the detached retrain scheduler actor."""
DEFAULT_CHECKPOINT_ROOT = "~/.cache/fleetwm/learner"
"""Where the scheduler's learner checkpoints (on the learner's node; ``~`` is that node's home)."""
DEFAULT_TRAIN_POLICY = False
"""Whether ``Learner.retrain`` trains a policy in each version it registers (``train_policy``). Off by
default: with the Nav2D preset PPO takes several times as long as the retrain itself on a 2-core
node (see ``POLICY_PRESETS``), so a scheduled retrain turns it on where the cores are there."""

PREDICTION_MSE_LIMIT = 0.5
"""One-step dynamics prediction MSE of served transitions above which the model has drifted (the article's
threshold): the default of both the drift watch (``DriftSettings.threshold``) and the alert rule
(``cluster.monitoring.rules.Thresholds.prediction_mse``)."""

PENDULUM_ID = "Pendulum-v1"
POLICY_ZONES_MAX = 4
"""Zones a policy sees: ``planners.policy.POLICY_ZONES``, spelled here so this module loads no torch
(a test holds the two equal)."""


@dataclass(frozen=True)
class PolicySettings:
    """How a policy is trained inside a world model with PPO (``learners.policy_training``), and scored.

    One PPO iteration steps ``num_envs`` imagined rollouts ``steps_per_env`` times (one batched model
    call per step), then makes ``epochs`` passes over that batch in minibatches of ``minibatch`` rows.
    """

    iterations: int = 30
    """PPO iterations."""
    num_envs: int = 512
    """Imagined rollouts stepped together, each from a logged start and a random ensemble member."""
    steps_per_env: int = 32
    """Steps of each rollout per iteration (the batch is num_envs x steps_per_env rows)."""
    horizon: int = 200
    """Steps after which an imagined episode is truncated."""
    lr: float = 1e-3
    """Adam's learning rate (actor, log-std and critic)."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE's lambda."""
    clip: float = 0.2
    """PPO's ratio clip."""
    entropy: float = 0.0
    """Entropy bonus coefficient."""
    minibatch: int = 2048
    """Rows per gradient step (at most one iteration's batch)."""
    epochs: int = 6
    """Passes over each iteration's batch."""
    reward_scale: float = 0.01
    """Rewards are multiplied by this for PPO only (the critic fits O(1) values); curves report them unscaled."""
    uncertainty_penalty: float = 0.0
    """Each imagined step's reward loses this times the members' disagreement on the next state (MOPO)."""
    reset_share: float = 0.0
    """Share of imagined starts that are first observations of the real env's resets (``env.reset`` only, no
    step: the model and every transition the policy learns from still come from the logs); the rest are logged
    observations (``learners.policy_training.with_reset_starts``)."""
    zone_weight: float = 1.0
    """Nav2D: PPO's reward is the goal reward plus this times the no-fly-zone cost (1: the planners' objective).
    Evaluations always score the planners' objective."""
    log_std_init: float = -0.5
    """Exploration's starting log-std, per action dimension (the log-std is learned from there)."""
    hidden: int = 64
    """Width of the policy's hidden layers (``PolicyConfig.hidden``)."""
    critic_hidden: int = 64
    """Width of the critic's two hidden layers (training only: the critic is not exported)."""
    layers: int = 2
    """Hidden layers of the policy (``PolicyConfig.layers``)."""
    zones: tuple[int, int] = (0, POLICY_ZONES_MAX)
    """(least, most) no-fly zones drawn per imagined Nav2D episode."""
    eval_episodes: int = 200
    """Episodes of the final evaluation, in the imagined env and in the real one."""
    eval_zones: int = 2
    """No-fly zones per real Nav2D evaluation episode."""
    seed: int = 0
    """Seeds the imagined env, PPO and the evaluations."""

    def __post_init__(self) -> None:
        positive = ("iterations", "num_envs", "steps_per_env", "horizon", "minibatch", "epochs", "hidden", "critic_hidden",
                    "layers", "eval_episodes")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PolicySettings.{name} must be an int >= 1, got {value!r}")
        for name in ("gamma", "gae_lambda"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"PolicySettings.{name} must be in (0, 1], got {getattr(self, name)!r}")
        for name in ("lr", "clip", "reward_scale", "zone_weight"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PolicySettings.{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.reset_share < 1:
            raise ValueError(f"PolicySettings.reset_share must be in [0, 1), got {self.reset_share!r}")
        if not self.uncertainty_penalty >= 0:
            raise ValueError(f"PolicySettings.uncertainty_penalty must be >= 0, got {self.uncertainty_penalty!r}")
        if not self.entropy >= 0:
            raise ValueError(f"PolicySettings.entropy must be >= 0, got {self.entropy!r}")
        low, high = self.zones
        if not 0 <= low <= high <= POLICY_ZONES_MAX:
            raise ValueError(f"PolicySettings.zones must be (least, most) with 0 <= least <= most <= "
                             f"{POLICY_ZONES_MAX}, got {self.zones!r}")
        if not 0 <= self.eval_zones <= POLICY_ZONES_MAX:
            raise ValueError(f"PolicySettings.eval_zones must be in [0, {POLICY_ZONES_MAX}], got {self.eval_zones!r}")

    @property
    def batch_rows(self) -> int:
        """Rows of one iteration's batch: num_envs x steps_per_env."""
        return self.num_envs * self.steps_per_env

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **overrides: Any) -> "PolicySettings":
        """A copy with ``overrides`` (None values ignored: options a caller left unset)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"PolicySettings: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


POLICY_PRESETS: dict[str, PolicySettings] = {
    # With the zones' full cost PPO settles where holding back from a zone costs less than crossing it
    # and never learns the way around (14% of real episodes reach the goal, weight annealed 0.1 -> 1);
    # at 0.1 it reaches the goal and cuts through zones, which the planner's shield is there to stop.
    NAV2D_ID: PolicySettings(iterations=120, zone_weight=0.1, entropy=0.01, lr=3e-4, epochs=10, minibatch=1024),
    # Pendulum's reward is dense; swinging up from hanging takes a long view: with PETS' 1,000 steps the
    # policy alone scored -339 at a discount of 0.95 and -220 at 0.99 (-264 with 120 iterations). Its logs are
    # mostly upright, so most imagined episodes start from the env's own resets (hanging): -187 at 0.8.
    PENDULUM_ID: PolicySettings(iterations=60, gamma=0.99, lr=1e-3, epochs=10, minibatch=1024, reward_scale=0.1,
                                zones=(0, 0), reset_share=0.8),
}
"""Each env's tuned defaults (``policy_settings`` falls back to ``PolicySettings()`` for the rest)."""


def policy_settings(env_id: str, **overrides: Any) -> PolicySettings:
    """The preset for ``env_id`` with ``overrides`` (see ``PolicySettings.with_overrides``)."""
    return POLICY_PRESETS.get(env_id, PolicySettings()).with_overrides(**overrides)


@dataclass(frozen=True)
class DriftSettings:
    """When a sustained rise of the served prediction error retrains the model (``learners.drift``).

    A rise shorter than ``sustain_s - window_s`` never fires: it lifts the windowed mean for at most its own
    length plus ``window_s``.
    """

    enabled: bool = True
    """Whether the serving engines watch for drift at all."""
    threshold: float = PREDICTION_MSE_LIMIT
    """Windowed mean prediction MSE of the production version above which it has drifted."""
    window_s: float = 60.0
    """Range of the rolling mean (row-weighted over the engine's batches)."""
    sustain_s: float = 300.0
    """How long the windowed mean must stay above ``threshold`` before a retrain is asked for."""
    min_rows: int = 50
    """Scored transitions the window must hold for its mean to count (a few agents say little)."""
    min_interval_s: float = 6 * 3600.0
    """At most one drift retrain per this many seconds (the learner's scheduler enforces it across replicas)."""
    retry_s: float = 300.0
    """After a request the learner did not take (busy, not reachable), how long a watch waits to ask again."""
    scheduler: str = DEFAULT_NAME
    """The retrain scheduler actor the engines ask (``wm learn --schedule``'s ``--scheduler-name``)."""

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"DriftSettings.threshold must be > 0, got {self.threshold!r}")
        for name in ("window_s", "sustain_s", "retry_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DriftSettings.{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if not self.window_s <= self.sustain_s:
            raise ValueError(f"DriftSettings.window_s ({self.window_s}) must be <= sustain_s ({self.sustain_s}), "
                             "or a short spike lifts the windowed mean for longer than the rise must last")
        if not self.min_interval_s >= 0:
            raise ValueError(f"DriftSettings.min_interval_s must be >= 0, got {self.min_interval_s!r}")
        if isinstance(self.min_rows, bool) or not isinstance(self.min_rows, int) or self.min_rows < 1:
            raise ValueError(f"DriftSettings.min_rows must be an int >= 1, got {self.min_rows!r}")
        if not self.scheduler:
            raise ValueError("DriftSettings.scheduler must name the retrain scheduler actor")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DriftSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"DriftSettings: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)
