"""A sweep's plain settings: the default search space, the schedulers and their defaults.

Plain Python (neither Ray nor torch), so ``wm tune --help`` builds its options from these at once;
``tune.sweep`` turns a space described here into Ray Tune domains.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

SCHEDULERS = ("asha", "fifo")
"""'asha' stops trials that trail at the same epoch; 'fifo' runs every trial to its end."""
SCHEDULER = "asha"
"""The scheduler a sweep uses unless told otherwise."""
GRACE_EPOCHS = 5
"""Dynamics epochs every trial runs before ASHA may stop it, unless told otherwise."""
HOLDOUT_FRACTION = 0.2
"""Share of the most recent episodes held out for scoring, unless told otherwise."""
SAMPLES = 8
"""Trials a sweep runs unless told otherwise."""


@dataclass(frozen=True)
class Choice:
    """One of ``values``, drawn uniformly (Ray Tune's ``tune.choice``)."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class LogUniform:
    """A float in [lower, upper], uniform in its logarithm (Ray Tune's ``tune.loguniform``)."""

    lower: float
    upper: float


DEFAULT_SPACE: Mapping[str, Choice | LogUniform] = MappingProxyType({
    "hidden": Choice((64, 128, 200)), "layers": Choice((2, 3, 4)), "ensemble_size": Choice((3, 5, 7)),
    "lr": LogUniform(3e-4, 3e-3)})
"""The settings a sweep varies unless told otherwise: the dynamics' width, depth, members and the learning rate."""


def describe(space: Mapping[str, Choice | LogUniform]) -> str:
    """A space as one line for help texts, e.g. ``hidden=64,128,200, lr=log-uniform 0.0003..0.003``."""
    parts = []
    for name, domain in space.items():
        if isinstance(domain, Choice):
            parts.append(f"{name}={','.join(map(str, domain.values))}")
        else:
            parts.append(f"{name}=log-uniform {domain.lower:g}..{domain.upper:g}")
    return ", ".join(parts)
