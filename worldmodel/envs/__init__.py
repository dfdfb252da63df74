"""Environments: Nav2D's registration and the one path every gymnasium id takes into fleetwm.

fleetwm models vector states and vector actions, so any gymnasium id whose observation and
action spaces are 1-D ``Box`` works; ``make_env`` is where that contract is checked.

Dimensions: ``S`` observation size, ``A`` action size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import gymnasium
import numpy as np
from gymnasium.envs.registration import parse_env_id

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
    if WAREHOUSE_ID not in gymnasium.registry:
        gymnasium.register(
            id=WAREHOUSE_ID,
            entry_point="worldmodel.envs.warehouse:WarehouseEnv",
            vector_entry_point="worldmodel.envs.warehouse:WarehouseVectorEnv",
            max_episode_steps=EPISODE_STEPS,
        )


register_envs()


@dataclass(frozen=True)
class SpaceSpec:
    """The shapes and action bounds of an environment, saved beside every model trained on it."""

    obs_dim: int
    """S, the length of an observation vector."""
    act_dim: int
    """A, the length of an action vector."""
    act_low: tuple[float, ...]
    """Lower action bound per dimension, length A."""
    act_high: tuple[float, ...]
    """Upper action bound per dimension, length A."""
    env_id: str
    """Gymnasium id the spaces come from."""

    def __post_init__(self) -> None:
        if self.obs_dim < 1 or self.act_dim < 1:
            raise ValueError(f"obs_dim and act_dim must be >= 1, got obs_dim={self.obs_dim}, act_dim={self.act_dim}")
        for name in ("act_low", "act_high"):
            bound = getattr(self, name)
            if not isinstance(bound, tuple) or len(bound) != self.act_dim:
                raise ValueError(f"{name} must be a tuple of act_dim={self.act_dim} floats, got {bound!r}")
        if any(lo > hi for lo, hi in zip(self.act_low, self.act_high)):
            raise ValueError(f"act_low {self.act_low} exceeds act_high {self.act_high} somewhere")

    def to_dict(self) -> dict[str, Any]:
        """Plain ints, floats, lists and strings, ready for ``json.dumps``."""
        return {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "act_low": list(self.act_low),
            "act_high": list(self.act_high),
            "env_id": self.env_id,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SpaceSpec":
        """Inverse of ``to_dict``."""
        expected = {"obs_dim", "act_dim", "act_low", "act_high", "env_id"}
        if set(d) != expected:
            raise ValueError(f"SpaceSpec needs exactly the keys {sorted(expected)}, got {sorted(d)}")
        return cls(
            obs_dim=int(d["obs_dim"]),
            act_dim=int(d["act_dim"]),
            act_low=tuple(float(x) for x in d["act_low"]),
            act_high=tuple(float(x) for x in d["act_high"]),
            env_id=str(d["env_id"]),
        )


def _check_spaces(env: gymnasium.Env, env_id: str) -> tuple[gymnasium.spaces.Box, gymnasium.spaces.Box]:
    for space in (env.observation_space, env.action_space):
        if not isinstance(space, gymnasium.spaces.Box) or len(space.shape) != 1:
            kind = "observation" if space is env.observation_space else "action"
            raise ValueError(
                f"env {env_id} has {kind} space {space}; fleetwm needs 1-D Box observation and action spaces"
            )
    return env.observation_space, env.action_space


def space_spec(env: gymnasium.Env, env_id: str) -> SpaceSpec:
    """The ``SpaceSpec`` of ``env``; raises ``ValueError`` unless both spaces are 1-D ``Box``."""
    obs_space, act_space = _check_spaces(env, env_id)
    return SpaceSpec(
        obs_dim=int(obs_space.shape[0]),
        act_dim=int(act_space.shape[0]),
        act_low=tuple(float(x) for x in np.asarray(act_space.low, dtype=np.float64)),
        act_high=tuple(float(x) for x in np.asarray(act_space.high, dtype=np.float64)),
        env_id=env_id,
    )


def make_env(env_id: str, **kwargs: Any) -> gymnasium.Env:
    """``gymnasium.make(env_id, **kwargs)``, checked to have 1-D ``Box`` spaces.

    Args:
        env_id: a registered gymnasium id (``"Nav2D-v0"``, ``"Pendulum-v1"``, ...), optionally
            ``"module:Id-v0"`` to import a registering module first.
        kwargs: passed to ``gymnasium.make`` (constructor arguments, ``max_episode_steps``).

    Returns:
        The environment with gymnasium's standard wrappers (time limit, checker).

    Raises:
        ValueError: the id is unknown or malformed, or a space is not a 1-D ``Box``.
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


__all__ = ["NAV2D_ID", "WAREHOUSE_ID", "Nav2DEnv", "SpaceSpec", "make_env", "register_envs", "space_spec"]
