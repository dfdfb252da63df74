"""Batched planners over a learned world model (no Ray): CEM, MPPI, gradient MPC, random shooting.

``planners.config`` (settings and names, plain Python) loads on its own; the planners, which need
torch, load on first use of a name exported here (``from planners import make_planner``), so a
command line can read the defaults without paying for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from planners.config import OBJECTIVES, PLANNER_NAMES, PROPAGATIONS, PlanConfig

_EXPORTS = {
    "planners.base": ("BasePlanner", "FallbackPolicy", "Planner", "PlanResult", "shift_plan", "zero_action"),
    "planners.cem": ("CEMConfig", "CEMPlanner"),
    "planners.gradient": ("GradientConfig", "GradientPlanner"),
    "planners.mppi": ("MPPIConfig", "MPPIPlanner"),
    "planners.objectives": ("Objective", "Params"),
    "planners.shooting": ("ShootingPlanner",),
    "planners.registry": ("PLANNERS", "SETTINGS", "make_planner", "resolved_settings", "settings_arguments"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    """Load the module defining ``name`` on first use (PEP 562)."""
    if name not in _WHERE:
        raise AttributeError(f"module 'planners' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


__all__ = ["OBJECTIVES", "PLANNER_NAMES", "PROPAGATIONS", "PlanConfig", *sorted(_WHERE)]
