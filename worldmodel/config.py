"""Model and training configuration: frozen, validated at construction, saved with every artifact.

Plain Python (no torch), so the command line builds its options from these defaults at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

DYNAMICS_KINDS = ("ensemble", "mlp", "gru", "fleet")
"""Dynamics models ``ModelConfig.dynamics`` may name."""
FLEET_HEADS = 4
"""Attention heads of the 'fleet' dynamics (``worldmodel.fleet_dynamics``); its hidden width is a multiple."""
ACTIVATIONS = ("relu", "silu", "hardswish")
"""Hidden activations ``ModelConfig.activation`` may name (``worldmodel.nn.ACTIVATIONS`` builds them)."""
UNCERTAINTY_KINDS = ("ensemble", "mc_dropout")
"""Where the 'ensemble' dynamics' members come from: independent nets, or dropout masks of one net
(``worldmodel.mc_dropout``)."""

C = TypeVar("C")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build a config dataclass from a dict, naming any key the class does not have."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return cls(**data)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the world model's networks.

    The defaults are the fleet-serving size the README's Nav2D and fleet results use: a 5 x 64x2
    ensemble with a 64x2 reward model. Measured on Nav2D with the default planner, a 5 x 200x3
    ensemble served a quarter of the requests (225 against 918 per second for 100 agents at
    10 Hz) and reached 84% success with two no-fly zones, against 99.6%. The PETS loop
    (``wm mbrl``) keeps a bigger default of its own, stated in its help.
    """

    dynamics: str = "ensemble"
    """'ensemble' (PETS probabilistic ensemble), 'mlp' (the article's deterministic MLP), 'gru' (recurrent) or
    'fleet' (attention over neighbours, for fleet envs; ``default_dynamics`` picks it for their logs)."""
    ensemble_size: int = 5
    """Members E of the dynamics ensemble ('mlp' may use several independent nets; 'gru' several GRUs)."""
    hidden: int = 64
    """Hidden units per layer of the dynamics networks."""
    layers: int = 2
    """Hidden layers of the dynamics MLP."""
    reward_hidden: int = 64
    """Hidden units per layer of the reward and termination networks."""
    reward_layers: int = 2
    """Hidden layers of the reward and termination networks."""
    activation: str = "relu"
    """Hidden activation of the MLPs: 'relu' (fastest on CPUs), 'silu' or 'hardswish'."""
    uncertainty: str = "ensemble"
    """Members of the 'ensemble' dynamics: 'ensemble' (E independent nets) or 'mc_dropout' (one net, E
    dropout masks per call); benchmarks/uncertainty.py compares their calibration."""
    dropout: float = 0.1
    """Probability of dropping a hidden unit of the 'mc_dropout' dynamics, in [0, 1)."""

    def __post_init__(self) -> None:
        _check(self.dynamics in DYNAMICS_KINDS,
               f"dynamics must be one of {', '.join(DYNAMICS_KINDS)}, got {self.dynamics!r}")
        for name in ("ensemble_size", "hidden", "layers", "reward_hidden", "reward_layers"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"{name} must be an integer >= 1, got {value!r}")
        _check(self.activation in ACTIVATIONS,
               f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        _check(self.uncertainty in UNCERTAINTY_KINDS,
               f"uncertainty must be one of {', '.join(UNCERTAINTY_KINDS)}, got {self.uncertainty!r}")
        _check(self.uncertainty == "ensemble" or self.dynamics == "ensemble",
               f"uncertainty {self.uncertainty!r} needs dynamics 'ensemble', got {self.dynamics!r}")
        _check(isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0,
               f"dropout must be in [0, 1), got {self.dropout!r}")
        _check(self.dynamics != "fleet" or self.hidden % FLEET_HEADS == 0,
               f"the fleet dynamics' hidden must be a multiple of its {FLEET_HEADS} heads, got {self.hidden}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_dynamics(env_id: str | None) -> str:
    """The dynamics kind trained on ``env_id``'s logs unless the user names one: 'fleet' for fleet envs
    (their robots push each other), else ``ModelConfig``'s default."""
    from worldmodel.envs.warehouse import WAREHOUSE_ID  # here: the env module imports numpy and torch

    return "fleet" if env_id == WAREHOUSE_ID else ModelConfig.dynamics


@dataclass(frozen=True)
class TrainConfig:
    """How the world model is fitted to logged transitions."""

    epochs: int = 200
    """Upper bound on passes over the training split; early stopping usually ends sooner."""
    batch_size: int = 256
    """Rows (or sequences, for 'gru') per gradient step and member."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-5
    """AdamW weight decay."""
    patience: int = 8
    """Stop after this many epochs without a better validation loss."""
    val_fraction: float = 0.1
    """Fraction of episodes held out for early stopping and variance calibration."""
    test_fraction: float = 0.1
    """Fraction of episodes held out for the reported metrics (never trained or calibrated on)."""
    bootstrap: bool = True
    """Train each ensemble member on its own bootstrap resample of the training rows (sequence windows, for 'gru')."""
    seq_len: int = 16
    """Sequence length for the recurrent model."""
    seed: int = 0
    """Seed for splits, initialisation, resampling and batching."""
    device: str = "auto"
    """Torch device ('auto' picks a GPU when there is one, else the CPU)."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "seq_len"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"{name} must be an integer >= 1, got {value!r}")
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            _check(0 < value < 0.5, f"{name} must be in (0, 0.5), got {value}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
