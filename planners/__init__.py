"""Batched planners over a learned world model (no Ray): CEM, MPPI, gradient MPC, random shooting, each
taking a policy as its fallback and, optionally, its prior.

``planners.config`` (settings and names, plain Python) loads on its own; the planners, which need
torch, load on first use of a name exported here (``from planners import make_planner``), so a
command line can read the defaults without paying for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from planners.config import MODES, OBJECTIVES, PLANNER_NAMES, PROPAGATIONS, PlanConfig

_EXPORTS = {
    "planners.base": ("BasePlanner", "Decision", "Fallback", "FallbackPolicy", "Planner", "PlanResult", "shift_plan",
                      "zero_action"),
    "planners.cem": ("CEMConfig", "CEMPlanner"),
    "planners.gradient": ("GradientConfig", "GradientPlanner"),
    "planners.mppi": ("MPPIConfig", "MPPIPlanner"),
    "planners.objectives": ("ActionPolicy", "Objective", "Params"),
    "planners.prior": ("PolicyPrior", "policy_rollout"),
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


__all__ = ["MODES", "OBJECTIVES", "PLANNER_NAMES", "PROPAGATIONS", "PlanConfig", *sorted(_WHERE)]
