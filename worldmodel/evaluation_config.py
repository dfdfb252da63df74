"""Settings of offline evaluation (``worldmodel.evaluation``): plain Python, so `wm models evaluate`'s options
default to them without loading torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalConfig:
    """How far and how finely to roll out."""

    horizon: int = 10
    """H: steps of each open-loop rollout."""
    particles: int = 8
    """P: particles per member of a probabilistic model (a deterministic one moves one path per member)."""
    stride: int | None = None
    """Steps between window starts in an episode (None: H, windows that do not overlap)."""
    max_windows: int = 4096
    """At most this many windows, spread evenly over the logs: bounds the cost on large logs."""
    seed: int = 0
    """Seed of the particles' noise: the same model on the same logs scores the same."""

    def __post_init__(self) -> None:
        for name in ("horizon", "particles", "max_windows"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.stride is not None and (not isinstance(self.stride, int) or self.stride < 1):
            raise ValueError(f"stride must be None or an integer >= 1, got {self.stride!r}")
