"""A toy survival task for the PETS loop's tests: reward 1 per step while upright, short episodes.

Importing this module registers ``Upright-v0``, so ``"tests.planners.survival_env:Upright-v0"`` makes
it (gymnasium's ``module:Id`` form, as ``wm mbrl --env`` takes it).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

ENV_ID = "Upright-v0"
FULL_ID = f"{__name__}:{ENV_ID}"
MAX_STEPS = 12
"""Time limit: episodes end within this many steps, tipped over or not."""


class UprightEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """A tilt angle that drifts by itself; the action pushes against it. Reward 1 per step while
    |tilt| < 1 (a constant reward: the episode ends when the pole tips over)."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._state = np.zeros(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._state = np.array([self.np_random.uniform(-0.3, 0.3), 0.0])
        return self._state.astype(np.float32), {}

    def step(self, action: np.ndarray):
        tilt, rate = self._state
        rate = rate + 0.1 * tilt - 0.1 * float(np.clip(action, -1, 1)[0])  # falls away from upright unless held
        tilt = tilt + rate
        self._state = np.array([tilt, rate])
        tipped = abs(tilt) >= 1.0
        return self._state.astype(np.float32), 1.0, bool(tipped), False, {}


if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point=UprightEnv, max_episode_steps=MAX_STEPS)
