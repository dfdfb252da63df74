"""Batched planners over a learned world model (no Ray): CEM, MPPI, gradient MPC, random shooting."""

from __future__ import annotations

import torch

from planners.base import BasePlanner, FallbackPolicy, PlanConfig, Planner, PlanResult, shift_plan, zero_action
from planners.cem import CEMConfig, CEMPlanner
from planners.gradient import GradientConfig, GradientPlanner
from planners.mppi import MPPIConfig, MPPIPlanner
from planners.objectives import Objective, Params
from planners.shooting import ShootingPlanner

PLANNERS: dict[str, type[BasePlanner]] = {
    "cem": CEMPlanner,
    "mppi": MPPIPlanner,
    "gradient": GradientPlanner,
    "shooting": ShootingPlanner,
}


def make_planner(name: str, dynamics: torch.nn.Module, objective: Objective, action_low: torch.Tensor,
                 action_high: torch.Tensor, cfg: PlanConfig, fallback: FallbackPolicy | None = None) -> BasePlanner:
    """A planner by name with its own settings at their defaults."""
    try:
        cls = PLANNERS[name]
    except KeyError:
        raise ValueError(f"unknown planner {name!r}; choose one of {', '.join(PLANNERS)}") from None
    return cls(dynamics, objective, action_low, action_high, cfg, fallback=fallback)


__all__ = ["PLANNERS", "BasePlanner", "CEMConfig", "CEMPlanner", "FallbackPolicy", "GradientConfig",
           "GradientPlanner", "MPPIConfig", "MPPIPlanner", "Objective", "Params", "PlanConfig", "PlanResult",
           "Planner", "ShootingPlanner", "make_planner", "shift_plan", "zero_action"]
