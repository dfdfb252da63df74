"""Environments: their registration and the one path every gymnasium id takes into fleetwm.

fleetwm's actions are vectors (a 1-D ``Box``). Observations are a vector (1-D ``Box``), a camera frame
(a uint8 ``Box`` of shape (H, W, C)), or a ``Dict`` of a frame (``IMAGE_KEY``) and a vector
(``PROPRIO_KEY``); ``make_env`` is where that contract is checked and ``SpaceSpec`` records which.

Dimensions: ``S`` observation (vector part) size, ``A`` action size, ``H, W, C`` image shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import gymnasium
import numpy as np
from gymnasium.envs.registration import parse_env_id

from worldmodel.envs.camera import IMAGE_KEY, PIXEL_NAV2D_ID, PROPRIO_KEY, PixelNav2DEnv
from worldmodel.envs.nav2d import MAX_EPISODE_STEPS, Nav2DEnv
from worldmodel.envs.warehouse import EPISODE_STEPS, WAREHOUSE_ID

NAV2D_ID = "Nav2D-v0"
"""Gymnasium id of the Nav2D point-mass environment."""


def register_envs() -> None:
    """Register fleetwm's environments with gymnasium; safe to call any number of times."""
    if NAV2D_ID not in gymnasium.registry:
        gymnasium.register(
            id=NAV2D_ID,
            entry_point="worldmodel.envs.nav2d:Nav2DEnv",
            max_episode_steps=MAX_EPISODE_STEPS,
        )
    if PIXEL_NAV2D_ID not in gymnasium.registry:
        gymnasium.register(
            id=PIXEL_NAV2D_ID,
            entry_point="worldmodel.envs.camera:PixelNav2DEnv",
            max_episode_steps=MAX_EPISODE_STEPS,
        )
    if WAREHOUSE_ID not in gymnasium.registry:
        gymnasium.register(
            id=WAREHOUSE_ID,
            entry_point="worldmodel.envs.warehouse:WarehouseEnv",
            vector_entry_point="worldmodel.envs.warehouse:WarehouseVectorEnv",
            max_episode_steps=EPISODE_STEPS,
        )


register_envs()


OBS_KINDS = ("vector", "image", "dict")
"""What an observation is: a vector, a camera frame, or a ``Dict`` of a frame and a vector."""


@dataclass(frozen=True)
class SpaceSpec:
    """The shapes and action bounds of an environment, saved beside every model trained on it."""

    obs_dim: int
    """S, the length of the observation vector (the ``Dict``'s vector part); 0 for a frame alone."""
    act_dim: int
    """A, the length of an action vector."""
    act_low: tuple[float, ...]
    """Lower action bound per dimension, length A."""
    act_high: tuple[float, ...]
    """Upper action bound per dimension, length A."""
    env_id: str
    """Gymnasium id the spaces come from."""
    image_shape: tuple[int, int, int] | None = None
    """(H, W, C) of the camera frame in each observation; None for vector observations."""

    def __post_init__(self) -> None:
        least_obs = 1 if self.image_shape is None else 0
        if self.obs_dim < least_obs or self.act_dim < 1:
            raise ValueError(f"obs_dim must be >= {least_obs} and act_dim >= 1, got obs_dim={self.obs_dim}, "
                             f"act_dim={self.act_dim}")
        if self.image_shape is not None and (not isinstance(self.image_shape, tuple) or len(self.image_shape) != 3
                                             or not all(isinstance(n, int) and n >= 1 for n in self.image_shape)):
            raise ValueError(f"image_shape must be None or a tuple of 3 ints >= 1 (H, W, C), got {self.image_shape!r}")
        for name in ("act_low", "act_high"):
            bound = getattr(self, name)
            if not isinstance(bound, tuple) or len(bound) != self.act_dim:
                raise ValueError(f"{name} must be a tuple of act_dim={self.act_dim} floats, got {bound!r}")
        if any(lo > hi for lo, hi in zip(self.act_low, self.act_high)):
            raise ValueError(f"act_low {self.act_low} exceeds act_high {self.act_high} somewhere")

    @property
    def obs_kind(self) -> str:
        """One of ``OBS_KINDS``."""
        if self.image_shape is None:
            return "vector"
        return "dict" if self.obs_dim else "image"

    def to_dict(self) -> dict[str, Any]:
        """Plain ints, floats, lists and strings, ready for ``json.dumps``; a vector env's dict has no
        ``image_shape`` key, so specs of vector envs read and write as they always have."""
        d: dict[str, Any] = {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "act_low": list(self.act_low),
            "act_high": list(self.act_high),
            "env_id": self.env_id,
        }
        if self.image_shape is not None:
            d["image_shape"] = list(self.image_shape)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SpaceSpec":
        """Inverse of ``to_dict``."""
        required = {"obs_dim", "act_dim", "act_low", "act_high", "env_id"}
        if not required <= set(d) <= required | {"image_shape"}:
            raise ValueError(f"SpaceSpec needs the keys {sorted(required)} and optionally 'image_shape', "
                             f"got {sorted(d)}")
        image_shape = d.get("image_shape")
        return cls(
            obs_dim=int(d["obs_dim"]),
            act_dim=int(d["act_dim"]),
            act_low=tuple(float(x) for x in d["act_low"]),
            act_high=tuple(float(x) for x in d["act_high"]),
            env_id=str(d["env_id"]),
            image_shape=None if image_shape is None else tuple(int(n) for n in image_shape),
        )


def _is_vector(space: gymnasium.Space) -> bool:
    return isinstance(space, gymnasium.spaces.Box) and len(space.shape) == 1


def _is_image(space: gymnasium.Space) -> bool:
    return isinstance(space, gymnasium.spaces.Box) and len(space.shape) == 3 and space.dtype == np.uint8


def _observation_shapes(space: gymnasium.Space, env_id: str) -> tuple[int, tuple[int, int, int] | None]:
    """(S, image shape or None) of an observation space fleetwm accepts; ValueError for any other."""
    if _is_vector(space):
        return int(space.shape[0]), None
    if _is_image(space):
        return 0, tuple(int(n) for n in space.shape)
    if (isinstance(space, gymnasium.spaces.Dict) and set(space.spaces) == {IMAGE_KEY, PROPRIO_KEY}
            and _is_image(space[IMAGE_KEY]) and _is_vector(space[PROPRIO_KEY])):
        return int(space[PROPRIO_KEY].shape[0]), tuple(int(n) for n in space[IMAGE_KEY].shape)
    raise ValueError(
        f"env {env_id} has observation space {space}; fleetwm needs a 1-D Box, a uint8 Box of shape (H, W, C), "
        f"or a Dict of {IMAGE_KEY!r} (such a Box) and {PROPRIO_KEY!r} (a 1-D Box)"
    )


def _check_spaces(env: gymnasium.Env, env_id: str) -> tuple[int, tuple[int, int, int] | None, gymnasium.spaces.Box]:
    """(S, image shape or None, action space), or ValueError naming the space fleetwm cannot use."""
    obs_dim, image_shape = _observation_shapes(env.observation_space, env_id)
    if not _is_vector(env.action_space):
        raise ValueError(f"env {env_id} has action space {env.action_space}; fleetwm needs a 1-D Box action space")
    return obs_dim, image_shape, env.action_space


def space_spec(env: gymnasium.Env, env_id: str) -> SpaceSpec:
    """The ``SpaceSpec`` of ``env``; raises ``ValueError`` for spaces ``make_env`` refuses."""
    obs_dim, image_shape, act_space = _check_spaces(env, env_id)
    return SpaceSpec(
        obs_dim=obs_dim,
        act_dim=int(act_space.shape[0]),
        act_low=tuple(float(x) for x in np.asarray(act_space.low, dtype=np.float64)),
        act_high=tuple(float(x) for x in np.asarray(act_space.high, dtype=np.float64)),
        env_id=env_id,
        image_shape=image_shape,
    )


def make_env(env_id: str, **kwargs: Any) -> gymnasium.Env:
    """``gymnasium.make(env_id, **kwargs)``, checked to have spaces fleetwm accepts (see the module's docstring).

    Args:
        env_id: a registered gymnasium id (``"Nav2D-v0"``, ``"Pendulum-v1"``, ...), optionally
            ``"module:Id-v0"`` to import a registering module first.
        kwargs: passed to ``gymnasium.make`` (constructor arguments, ``max_episode_steps``).

    Returns:
        The environment with gymnasium's standard wrappers (time limit, checker).

    Raises:
        ValueError: the id is unknown or malformed, or a space is not one fleetwm accepts.
    """
    register_envs()
    try:
        # parse_env_id checks only the id's form, so any error it raises is about the id;
        # gymnasium.make's other errors (missing dependencies, bad kwargs) pass through.
        parse_env_id(env_id.split(":")[-1])
    except gymnasium.error.Error as e:
        raise ValueError(f"unknown env id {env_id!r}: it must be a registered gymnasium id ({e})") from e
    try:
        env = gymnasium.make(env_id, **kwargs)
    except (gymnasium.error.UnregisteredEnv, gymnasium.error.DeprecatedEnv) as e:
        raise ValueError(f"unknown env id {env_id!r}: it must be a registered gymnasium id ({e})") from e
    try:
        _check_spaces(env, env_id)
    except ValueError:
        env.close()
        raise
    return env


__all__ = ["IMAGE_KEY", "NAV2D_ID", "OBS_KINDS", "PIXEL_NAV2D_ID", "PROPRIO_KEY", "WAREHOUSE_ID", "Nav2DEnv",
           "PixelNav2DEnv", "SpaceSpec", "make_env", "register_envs", "space_spec"]
