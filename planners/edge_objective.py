"""Nav2D's objective and iCEM's coloured noise in numpy, for the edge planner (``planners.edge``): no torch.

The same numbers as the torch planners' ``GoalReward`` and ``NoFlyZones`` (``planners.objectives``) and
``coloured_noise`` (``planners.noise``); tests hold them equal.

Shapes: ``N`` agents, ``Z`` zones, ``H`` horizon, ``A`` action; ``...`` any leading axes (rollout rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from worldmodel.envs.nav2d import POS_DIMS

ZONE_WEIGHT = 100.0
"""``NoFlyZones``' default weight: reward lost per unit of depth inside (radius + margin), and per step inside."""
ZONE_MARGIN = 0.3
"""``NoFlyZones``' default margin around each zone."""


def goal_reward(new_obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Minus the distance from the reached position to the goal: new_obs (..., S), goal (..., 2) -> (...)."""
    d = new_obs[..., POS_DIMS] - goal
    return -np.sqrt(np.einsum("...i,...i->...", d, d))


def zone_reward(new_obs: np.ndarray, zones: np.ndarray, weight: float = ZONE_WEIGHT,
                margin: float = ZONE_MARGIN) -> np.ndarray:
    """``NoFlyZones``: minus ``weight`` x (depth inside radius + margin, plus 1 strictly inside), summed over
    zones; padding zones (radius 0) cost nothing. new_obs (..., S), zones (..., Z, 3) -> (...)."""
    pos = new_obs[..., None, POS_DIMS]  # (..., 1, 2)
    d = pos - zones[..., :2]  # (..., Z, 2)
    dist = np.sqrt(np.einsum("...i,...i->...", d, d))  # (..., Z)
    radius = zones[..., 2]
    depth = np.maximum(radius + margin - dist, 0) * (radius > 0)
    return -weight * (depth + (dist < radius)).sum(-1)


@dataclass(frozen=True)
class EdgeObjective:
    """What the edge planner maximises: 'goal' (Nav2D's reward) or 'learned' (the exported reward
    model, evaluated by the planner), plus the no-fly zones' costs when ``zones``."""

    reward: str = "learned"
    """'learned' or 'goal'."""
    zones: bool = False
    """Add ``NoFlyZones``' costs (each agent's zones come with the call)."""

    def __post_init__(self) -> None:
        if self.reward not in ("learned", "goal"):
            raise ValueError(f"reward must be 'learned' or 'goal', got {self.reward!r}")

    def terms(self, new_obs: np.ndarray, goal: np.ndarray | None, zones: np.ndarray | None) -> np.ndarray:
        """The analytic terms' reward (the learned one is added by the planner): (..., S) -> (...)."""
        total = np.zeros(new_obs.shape[:-1], np.float32)
        if self.reward == "goal":
            total += goal_reward(new_obs, _need(goal, "goal"))
        if self.zones:
            total += zone_reward(new_obs, _need(zones, "zones"))
        return total


def _need(value: np.ndarray | None, name: str) -> np.ndarray:
    if value is None:
        raise ValueError(f"the objective needs each agent's {name!r}; none was given")
    return value


def coloured_noise(shape: tuple[int, ...], beta: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian noise, coloured 1/f^beta along the second-to-last axis H (white at 0).

    Args:
        shape: (..., H, A).
    """
    *lead, h, a = shape
    if beta == 0:
        return rng.standard_normal(shape, dtype=np.float32)
    basis = _colouring(h, float(beta))  # (H, 2F)
    white = rng.standard_normal((basis.shape[1], int(np.prod(lead)) * a), dtype=np.float32)
    return np.moveaxis((basis @ white).reshape(h, *lead, a), 0, -2)


@lru_cache(maxsize=64)
def _colouring(h: int, beta: float) -> np.ndarray:
    """(H, 2F) float32: irfft of white spectra shaped 1/f^(beta/2), scaled to unit variance per output
    (``planners.noise._colouring``'s basis, built the same way)."""
    freqs = np.fft.rfftfreq(h)  # (F,)
    freqs[0] = freqs[1] if h > 1 else 1.0
    spectra = np.diag(freqs ** (-beta / 2)).astype(np.complex128)  # (F, F)
    basis = np.concatenate([np.fft.irfft(spectra, n=h), np.fft.irfft(1j * spectra, n=h)])  # (2F, H)
    basis = basis / np.sqrt(np.square(basis).sum(0).mean())
    return np.ascontiguousarray(basis.T, dtype=np.float32)
