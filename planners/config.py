"""Planner settings every planner shares, and the names a caller may choose from.

Plain Python (no torch), so the command line can build its options and help from these
defaults without loading the planners themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from worldmodel.config import ModelConfig, TrainConfig

PLANNER_NAMES = ("cem", "mppi", "gradient", "shooting")
"""Planners ``planners.make_planner`` builds, by name."""

PROPAGATIONS = ("ts1", "tsinf", "expectation")
"""How uncertainty flows through the ensemble in a rollout (PETS); see ``planners.rollout``."""

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
    uncertainty_penalty: float = 0.0
    """Cost per unit of ensemble disagreement, subtracted from every step's reward."""
    seed: int = 0
    """Seed of the planner's random stream."""

    def __post_init__(self) -> None:
        for name in ("horizon", "samples", "iterations", "particles"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.propagation not in PROPAGATIONS:
            raise ValueError(f"propagation must be one of {', '.join(PROPAGATIONS)}, got {self.propagation!r}")
        if self.budget_ms is not None and self.budget_ms <= 0:
            raise ValueError(f"budget_ms must be > 0 or None, got {self.budget_ms}")
        if self.uncertainty_penalty < 0:
            raise ValueError(f"uncertainty_penalty must be >= 0, got {self.uncertainty_penalty}")


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
