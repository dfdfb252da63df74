"""PixelNav2D: Nav2D seen from above by a noisy camera, the agent that must plan from pixels.

The world is Nav2D's (same dynamics, rewards, goals and no-fly zones, see ``nav2d.py``); only what the
agent observes changes. By default the observation is a (H, W, 3) uint8 RGB frame (``camera_render``):
arena, zones, goal and agent, with camera noise. With ``proprio=True`` it is a ``Dict`` of the frame
(``IMAGE_KEY``) and the agent's velocity (``PROPRIO_KEY``, what an IMU gives: never position or goal).
The true Nav2D state is in ``info["state"]`` for evaluation only; nothing that trains may read it.

Dimensions: ``H = W`` image size, ``Z`` no-fly zones.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from worldmodel.envs.camera_render import Camera, corrupt, render
from worldmodel.envs.nav2d import DT, GOAL_DIMS, POS_DIMS, VEL_DIMS, Nav2DEnv

PIXEL_NAV2D_ID = "PixelNav2D-v0"
"""Gymnasium id of the camera Nav2D."""
IMAGE_KEY = "image"
"""Key of the camera frame in a ``Dict`` observation."""
PROPRIO_KEY = "proprio"
"""Key of the vector part (proprioception) in a ``Dict`` observation."""
STATE_INFO = "state"
"""``info`` key of the true Nav2D state (S,) = (6,): for evaluation, never for training."""
DEFAULT_NO_FLY_ZONES = 2
"""Zones per episode unless told otherwise: the perception benchmark's setting."""

# Camera options a caller may set; the arena and goal radius come from the world so they always agree.
CAMERA_OPTIONS = frozenset(f.name for f in dataclasses.fields(Camera)) - {"arena", "goal_radius"}
_NAV2D_OPTIONS = frozenset(inspect.signature(Nav2DEnv.__init__).parameters) - {"self", "render_mode",
                                                                                "num_no_fly_zones"}


class PixelNav2DEnv(gym.Env):
    """Nav2D observed through a top-down camera; ``info`` is Nav2D's plus ``STATE_INFO``.

    Reset options are Nav2D's. Frames are deterministic given the reset seed: the camera's random stream
    (noise, occlusion) is seeded from it, independently of Nav2D's own (starts, goals, actuation noise).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": round(1 / DT)}

    def __init__(self, proprio: bool = False, num_no_fly_zones: int = DEFAULT_NO_FLY_ZONES,
                 render_mode: str | None = None, **options: Any) -> None:
        """Args:
        proprio: observe a ``Dict`` of the frame and the velocity instead of the frame alone.
        num_no_fly_zones: zones drawn per episode (Nav2D's option, with this env's default).
        render_mode: None, or "rgb_array" for ``render()`` to return the last clean (noise-free) frame.
        options: camera options (``CAMERA_OPTIONS``: fields of ``camera_render.Camera``, defaults there)
            and Nav2D's constructor options (arena, spawn, max_speed, action_noise, goal_radius, zone_radius).
        """
        unknown = sorted(set(options) - CAMERA_OPTIONS - _NAV2D_OPTIONS)
        if unknown:
            raise ValueError(f"unknown options {unknown} for {PIXEL_NAV2D_ID}; it accepts proprio, "
                             f"num_no_fly_zones, render_mode, {sorted(CAMERA_OPTIONS | _NAV2D_OPTIONS)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.world = Nav2DEnv(num_no_fly_zones=num_no_fly_zones,
                              **{k: v for k, v in options.items() if k in _NAV2D_OPTIONS})
        self.camera = Camera(arena=self.world.arena, goal_radius=self.world.goal_radius,
                             **{k: v for k, v in options.items() if k in CAMERA_OPTIONS})
        self.proprio = bool(proprio)
        self.render_mode = render_mode
        image = spaces.Box(0, 255, shape=self.camera.shape, dtype=np.uint8)
        if self.proprio:
            speed = self.world.max_speed
            velocity = spaces.Box(-speed, speed, shape=(VEL_DIMS.stop - VEL_DIMS.start,), dtype=np.float32)
            self.observation_space = spaces.Dict({IMAGE_KEY: image, PROPRIO_KEY: velocity})
        else:
            self.observation_space = image
        self.action_space = self.world.action_space
        self._clean = np.zeros(self.camera.shape, dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        # The world gets a seed drawn from the camera's stream: one seed fixes both, and the two streams
        # differ (the same seed in both would make the pixel noise repeat the actuation noise).
        world_seed = None if seed is None else int(self.np_random.integers(2**63 - 1))
        state, info = self.world.reset(seed=world_seed, options=options)
        return self._observe(state, info)

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        state, reward, terminated, truncated, info = self.world.step(action)
        obs, info = self._observe(state, info)
        return obs, reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """The last clean frame (H, W, 3) uint8 when ``render_mode`` is "rgb_array", else None."""
        return self._clean.copy() if self.render_mode == "rgb_array" else None

    def _observe(self, state: np.ndarray, info: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The observation of a Nav2D state (S,) and its info with ``STATE_INFO`` added."""
        zones = info["no_fly_zones"]  # (Z, 3)
        clean = render(state[None, POS_DIMS], state[None, GOAL_DIMS], zones[None], self.camera)  # (1, H, W, 3)
        self._clean = clean[0]
        frame = corrupt(clean, self.camera, self.np_random)[0]  # (H, W, 3)
        info = {**info, STATE_INFO: state.copy()}
        if self.proprio:
            return {IMAGE_KEY: frame, PROPRIO_KEY: state[VEL_DIMS].copy()}, info
        return frame, info
