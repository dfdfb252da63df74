"""Planners by name, each with its own settings class: what ``make_planner`` builds."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

from planners.base import BasePlanner
from planners.cem import CEMConfig, CEMPlanner
from planners.config import PLANNER_NAMES, PlanConfig
from planners.gradient import GradientConfig, GradientPlanner
from planners.mppi import MPPIConfig, MPPIPlanner
from planners.objectives import ActionPolicy, Objective
from planners.shooting import ShootingPlanner
from worldmodel.config import config_from_dict

PLANNERS: dict[str, type[BasePlanner]] = {
    "cem": CEMPlanner,
    "mppi": MPPIPlanner,
    "gradient": GradientPlanner,
    "shooting": ShootingPlanner,
}
assert tuple(PLANNERS) == PLANNER_NAMES, "planners.config.PLANNER_NAMES must list PLANNERS' keys"

SETTINGS: dict[str, tuple[str, type]] = {
    "cem": ("cem", CEMConfig),
    "mppi": ("mppi", MPPIConfig),
    "gradient": ("grad", GradientConfig),
}
"""Each planner's own settings: its constructor argument and config class."""


def make_planner(name: str, dynamics: torch.nn.Module, objective: Objective, action_low: torch.Tensor,
                 action_high: torch.Tensor, cfg: PlanConfig, fallback: ActionPolicy | None = None,
                 settings: Mapping[str, Any] | None = None, **kwargs: Any) -> BasePlanner:
    """A planner by name; ``settings`` are fields of its own config (``CEMConfig`` for 'cem', ...),
    defaults where absent.

    Args:
        fallback: acts where the plan cannot (``fallback(obs, params)``); the zero action when None.
        kwargs: ``prior`` (an ``ActionPolicy`` whose rollouts make ``cfg.prior_share`` of the candidates),
            ``shield`` (a ``planners.shield.Shield`` checking each action against the constraints),
            ``hold_plan`` (``BasePlanner``'s) and, for 'cem', ``shrink`` (``CEMPlanner``'s).
    """
    own = settings_arguments(name, settings)
    return PLANNERS[name](dynamics, objective, action_low, action_high, cfg, fallback=fallback, **own, **kwargs)


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


def resolved_settings(name: str, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Planner ``name``'s own settings with its defaults filled in ({} for a planner without any)."""
    if name not in SETTINGS:
        settings_arguments(name, settings)  # names an unknown planner, or settings it cannot take
        return {}
    arg, config = SETTINGS[name]
    own = settings_arguments(name, settings).get(arg, config())
    return dataclasses.asdict(own)
