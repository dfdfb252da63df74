"""Batched planners over a learned world model (no Ray): CEM, MPPI, gradient MPC, random shooting."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from planners.base import BasePlanner, FallbackPolicy, PlanConfig, Planner, PlanResult, shift_plan, zero_action
from planners.cem import CEMConfig, CEMPlanner
from planners.gradient import GradientConfig, GradientPlanner
from planners.mppi import MPPIConfig, MPPIPlanner
from planners.objectives import Objective, Params
from planners.shooting import ShootingPlanner
from worldmodel.config import config_from_dict

PLANNERS: dict[str, type[BasePlanner]] = {
    "cem": CEMPlanner,
    "mppi": MPPIPlanner,
    "gradient": GradientPlanner,
    "shooting": ShootingPlanner,
}

SETTINGS: dict[str, tuple[str, type]] = {
    "cem": ("cem", CEMConfig),
    "mppi": ("mppi", MPPIConfig),
    "gradient": ("grad", GradientConfig),
}
"""Each planner's own settings: its constructor argument and config class."""


def make_planner(name: str, dynamics: torch.nn.Module, objective: Objective, action_low: torch.Tensor,
                 action_high: torch.Tensor, cfg: PlanConfig, fallback: FallbackPolicy | None = None,
                 settings: Mapping[str, Any] | None = None) -> BasePlanner:
    """A planner by name; ``settings`` are fields of its own config (``CEMConfig`` for 'cem', ...),
    defaults where absent."""
    own = settings_arguments(name, settings)
    return PLANNERS[name](dynamics, objective, action_low, action_high, cfg, fallback=fallback, **own)


def settings_arguments(name: str, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Checked constructor arguments for planner ``name``'s own settings: {} or e.g. {"cem": CEMConfig(...)}.

    Raises:
        ValueError: naming an unknown planner or setting, or a setting's bad value.
    """
    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r}; choose one of {', '.join(PLANNERS)}")
    if not settings:
        return {}
    if name not in SETTINGS:
        raise ValueError(f"planner {name!r} has no settings of its own; got {', '.join(sorted(settings))}")
    arg, config = SETTINGS[name]
    try:
        return {arg: config_from_dict(config, dict(settings))}
    except TypeError as e:  # a value of the wrong type, caught by the config's own checks
        raise ValueError(f"{config.__name__}: {e}") from None


__all__ = ["PLANNERS", "BasePlanner", "CEMConfig", "CEMPlanner", "FallbackPolicy", "GradientConfig",
           "GradientPlanner", "MPPIConfig", "MPPIPlanner", "Objective", "Params", "PlanConfig", "PlanResult",
           "Planner", "SETTINGS", "ShootingPlanner", "make_planner", "settings_arguments", "shift_plan", "zero_action"]
