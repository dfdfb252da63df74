"""Planner settings every planner shares, and the names a caller may choose from.

Plain Python (no torch), so the command line can build its options and help from these
defaults without loading the planners themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worldmodel.config import ModelConfig, TrainConfig


PLANNER_NAMES = ("cem", "mppi", "gradient", "shooting")
"""Planners ``planners.make_planner`` builds, by name."""

DEFAULT_PLANNER = "cem"
"""The planner every command and the service use unless told otherwise."""

PROPAGATIONS = ("ts1", "tsinf", "expectation")
"""How uncertainty flows through the ensemble in a rollout (PETS); see ``planners.rollout``."""

MODES = ("plan", "policy")
"""How an agent's action is decided: 'plan' (the planner, the policy as its fallback and prior) or
'policy' (the policy's action alone, shielded: no planning)."""

SHIELD_HORIZON = 10
"""Steps the shield checks ahead (``planners.shield.Shield``'s horizon) in the service and `wm eval`. It
must cover the stopping distance at the speeds agents reach: a Nav2D controller driving straight at
the zones on its way (8 agents, 8 episodes, 2 zones) entered them in 4 episodes (319 steps inside)
with 5 steps, none with 10 or 15; unshielded, in all 8 (103 steps). Its cost beside the served planner
(64 agents with 2 zones, one CPU thread, the default model): 11.2 ms a call unshielded, 14.0 ms with 5
steps, 15.7 ms with 10."""

BREACH_WEIGHT = 300.0
"""Cost of a predicted geofence breach in a camera (latent) model's objective, served and evaluated
(``planners.latent_eval.LatentBreach``): more than any distance a breach saves (rewards are -20..0). Chosen by
closed-loop runs of one trained model (100 episodes each): 100, 300 and 1,000 gave 88, 86 and 78% success with
489, 369 and 243 steps in zones."""

OBJECTIVES = ("learned", "goal")
"""Objectives a caller may plan for: the model's learned reward, or Nav2D's goal reward (minus the
distance to each agent's goal, computed from the observation)."""


@dataclass(frozen=True)
class PlanConfig:
    """Settings every planner shares.

    The defaults are the served setting, the one the README's Nav2D results come from: one
    warm-started CEM round per step over a 3-second horizon (with CEM's own defaults, iCEM's
    coloured noise as wide as the action box). Every command and the service read them from here.
    """

    horizon: int = 30
    """H, steps simulated ahead. With H 20, 1 to 3% of Nav2D episodes end wedged between two
    no-fly zones: a 2-second horizon cannot show that going around them pays."""
    samples: int = 32
    """K, candidate sequences per agent per iteration (restarts, for the gradient planner)."""
    iterations: int = 1
    """Optimisation rounds per call, unless the time budget ends them sooner. One round suffices
    when each call is warm-started from the previous step's plan, shifted by one step."""
    propagation: str = "ts1"
    """How uncertainty flows through the ensemble: 'ts1', 'tsinf' or 'expectation' (PETS)."""
    particles: int = 1
    """P, sampled futures per candidate in the 'ts' modes (dealt to members round-robin; 'tsinf'
    needs a multiple of the ensemble size)."""
    budget_ms: float | None = None
    """Hard time budget per call; the best plan so far is returned when it is spent."""
    disagreement_threshold: float | None = None
    """Fall back when the chosen plan's mean ensemble disagreement exceeds this."""
    disagreement_penalty: float = 0.0
    """Cost per unit of ensemble disagreement, subtracted from every step's reward."""
    seed: int = 0
    """Seed of the planner's random stream."""
    prior_share: float = 0.0
    """Share of the K candidates that are a policy's rollouts through the model's mean (TD-MPC2's
    policy prior), in [0, 1); used when the planner is given a policy as its prior. At least one
    candidate stays the planner's own."""
    prior_noise: float = 0.1
    """Standard deviation of the noise on the prior's candidates (all but one), as a fraction of half
    the action range."""

    def __post_init__(self) -> None:
        for name in ("horizon", "samples", "iterations", "particles"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.propagation not in PROPAGATIONS:
            raise ValueError(f"propagation must be one of {', '.join(PROPAGATIONS)}, got {self.propagation!r}")
        if self.budget_ms is not None and self.budget_ms <= 0:
            raise ValueError(f"budget_ms must be > 0 or None, got {self.budget_ms}")
        if self.disagreement_penalty < 0:
            raise ValueError(f"disagreement_penalty must be >= 0, got {self.disagreement_penalty}")
        if not 0 <= self.prior_share < 1:
            raise ValueError(f"prior_share must be in [0, 1), got {self.prior_share}")
        if self.prior_noise < 0:
            raise ValueError(f"prior_noise must be >= 0, got {self.prior_noise}")

    @property
    def prior_samples(self) -> int:
        """How many of the K candidates a policy prior supplies: round(prior_share * K), at least 1 when
        the share is positive, at most K - 1."""
        if self.prior_share == 0:
            return 0
        return min(self.samples - 1, max(1, round(self.prior_share * self.samples)))


LATENT_PLAN = PlanConfig(horizon=15, samples=128, iterations=1)
"""Camera (latent) models' planner, evaluated and served (``planners.latent_eval``, ``ServiceConfig.latent``): one
warm-started CEM round over 1.5 seconds with four times the vector models' samples. A latent rollout drifts
from what the frames will show with every step, so a plan scored 30 steps ahead is scored on latents further
off; ``benchmarks/perception.py`` runs the default model with other settings beside this one (docs/perception.md).
"""


# The PETS loop's own defaults (planners.mbrl, `wm mbrl`), kept apart from the fleet-serving ones.
PETS_PLAN = PlanConfig(horizon=25, samples=200, iterations=5)
"""The loop's planner: PETS' CEM, several rounds over many samples (each step starts cold on a model
that changes every episode); tuned on Pendulum-v1 (``benchmarks/pendulum_mbrl.py``)."""
PETS_MODEL = ModelConfig(hidden=200, layers=3, reward_hidden=200, reward_layers=3, activation="silu")
"""The loop's model, PETS' size, bigger than ``ModelConfig``'s fleet-serving default: it learns a
dynamics AND the reward from a few hundred rows. SiLU (PETS' swish): with ReLU the planned Pendulum
episodes 3-5 averaged about -700 on each of 3 seeds, against -122, -612 and -267."""
PETS_TRAIN = TrainConfig(epochs=200, batch_size=32, patience=200)
"""A few hundred rows make an epoch only a few gradient steps, and early stopping on 20-row validation
chunks ended the reward fit after a few dozen, leaving it too optimistic about states it had not seen
(the planner then spun the pendulum). So every retraining runs the full cap (patience = epochs), the
fit still restoring the best-validation epoch."""


@dataclass(frozen=True)
class FleetPlanConfig:
    """Settings of a fleet planning call."""

    horizon: int = 10
    """H, steps simulated ahead (1 s: beyond the 0.75 s a robot needs to stop from full speed; the
    distance fields carry the rest of the way)."""
    samples: int = 20
    """K, samples per robot per round: 200 robots plan in 65-75 ms on one core at H 10, K 20 (H 15, K 32: about
    180 ms); at these settings the coordinated planner meets every closed-loop target of docs/warehouse.md."""
    iterations: int = 1
    """Rounds per call (warm-started calls need one)."""
    seed: int = 0
    """Seed of the planner's random stream."""

    def __post_init__(self) -> None:
        for name in ("horizon", "samples", "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class EvalConfig:
    """What a closed-loop evaluation (``planners.evaluate.closed_loop``, `wm eval`) runs."""

    planner: str = DEFAULT_PLANNER
    """'cem', 'mppi', 'gradient' or 'shooting'."""
    agents: int = 16
    """N, envs stepped together and planned for in one call per step."""
    episodes: int = 16
    """Episodes counted: the first ``episodes`` to start (summed over agents), each run to its end."""
    objective: str = "learned"
    """'learned' (the model's reward model) or 'goal' (Nav2D's true reward)."""
    no_fly_zones: int = 0
    """Nav2D zones per episode (0: off); their costs join the objective."""
    mode: str = "plan"
    """'plan', or 'policy': the policy's action alone, shielded (needs a policy)."""
    shield: bool = True
    """Check each action against the zones with the shield (Nav2D), as the service does."""
    shield_horizon: int = SHIELD_HORIZON
    """Steps the shield checks ahead."""
    seed: int = 0
    """Seeds the envs' resets (the planner's seed is ``plan.seed``)."""
    plan: PlanConfig = PlanConfig()
    """Settings every planner shares."""
    settings: dict[str, Any] | None = None
    """The planner's own settings (``make_planner``), e.g. CEM's ``noise_beta``; None keeps its defaults."""

    def __post_init__(self) -> None:
        if self.planner not in PLANNER_NAMES:
            raise ValueError(f"planner must be one of {', '.join(PLANNER_NAMES)}, got {self.planner!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.agents < 1 or self.episodes < 1:
            raise ValueError(f"agents and episodes must be >= 1, got {self.agents} and {self.episodes}")
        if self.no_fly_zones < 0:
            raise ValueError(f"no_fly_zones must be >= 0, got {self.no_fly_zones}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.shield_horizon < 1:
            raise ValueError(f"shield_horizon must be >= 1, got {self.shield_horizon}")


@dataclass(frozen=True)
class MBRLConfig:
    """One run of the PETS loop (``planners.mbrl.run_mbrl``, `wm mbrl`); defaults are the loop's own."""

    env_id: str
    """A gymnasium id with 1-D Box spaces (``module:Id`` imports the module that registers it)."""
    episodes: int
    """Total episodes, random ones included; more than ``random_episodes``."""
    planner: str = DEFAULT_PLANNER
    """'cem', 'mppi', 'gradient' or 'shooting'."""
    random_episodes: int = 1
    """Episodes of uniform random actions before the first model, >= 1 (a model needs data)."""
    eval_episodes: int = 0
    """Episodes run at the end by a model trained on all the data, from start states of their own;
    neither learned from nor logged."""
    plan: PlanConfig = PETS_PLAN
    """Planner settings (their seed is replaced, see ``seed``)."""
    model: ModelConfig = PETS_MODEL
    """World-model architecture."""
    train: TrainConfig = PETS_TRAIN
    """Fitting settings; ``epochs`` caps each retraining (their seed is replaced, see ``seed``)."""
    cem: CEMConfig | None = None
    """CEM's own settings (None: PETS' white noise, elites the top 10% of samples); CEM only."""
    seed: int = 0
    """Fixes everything: random actions, env resets, model training and planning (episode i trains
    and plans with seed + i), so a run repeats exactly on the same machine and software."""
    target_return: float | None = None
    """The return whose first attainment the result's ``steps_to_target`` reports."""

    def __post_init__(self) -> None:
        if self.planner not in PLANNER_NAMES:
            raise ValueError(f"planner must be one of {', '.join(PLANNER_NAMES)}, got {self.planner!r}")
        if self.eval_episodes < 0:
            raise ValueError(f"eval_episodes must be >= 0, got {self.eval_episodes}")
        if self.cem is not None and self.planner != "cem":
            raise ValueError(f"CEM settings were given but the planner is {self.planner!r}")
        if self.random_episodes < 1:
            raise ValueError(f"random_episodes must be >= 1 (a model needs data), got {self.random_episodes}")
        if self.episodes <= self.random_episodes:
            raise ValueError(f"episodes ({self.episodes}) must exceed random_episodes ({self.random_episodes})")


@dataclass(frozen=True)
class CEMConfig:
    """CEM's own settings.

    The defaults are iCEM's sampling (coloured noise, as wide as the action box), the setting the
    README's Nav2D results and the service use: its long coherent swerves go around pairs of no-fly
    zones that white noise at half the width leaves agents wedged between (PETS' white noise:
    ``noise_beta=0, init_std=0.5``).
    """

    elites: int = 20
    """Sequences kept per agent per round to refit the sampling distribution (at most the samples K)."""
    alpha: float = 0.1
    """Weight of the previous mean/std when refitting (smoothing; 0 = no memory)."""
    init_std: float = 1.0
    """Initial standard deviation, as a fraction of half the action range."""
    noise_beta: float = 2.0
    """Exponent of the noise spectrum 1/f^beta over the horizon: 0 white (PETS), 2 to 2.5 iCEM."""

    def __post_init__(self) -> None:
        if self.elites < 1:
            raise ValueError(f"elites must be >= 1, got {self.elites}")
        if not 0 <= self.alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha}")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")
        if self.noise_beta < 0:
            raise ValueError(f"noise_beta must be >= 0, got {self.noise_beta}")
