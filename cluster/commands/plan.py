"""Planner options shared by the commands that plan (`wm eval`, `wm bench plan`, `wm serve`).

Every default comes from ``planners.config.PlanConfig`` (and each planner's own config for
``--planner-opt``), the one place the planner settings are decided.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from planners.config import DEFAULT_PLANNER, PLANNER_NAMES, PROPAGATIONS, PlanConfig

DEFAULTS = PlanConfig()


def add_plan_options(p: argparse.ArgumentParser, defaults: PlanConfig = DEFAULTS) -> None:
    """Planner settings shared by the commands that plan, defaulting to ``defaults``' fields."""
    p.add_argument("--planner", choices=list(PLANNER_NAMES), default=DEFAULT_PLANNER, help="(default: %(default)s)")
    p.add_argument("--horizon", type=int, default=defaults.horizon, help="H steps ahead (default: %(default)s)")
    p.add_argument("--samples", type=int, default=defaults.samples,
                   help="K candidates per round, restarts for gradient (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=defaults.iterations,
                   help="rounds per planning call (default: %(default)s)")
    p.add_argument("--propagation", choices=PROPAGATIONS, default=defaults.propagation)
    p.add_argument("--particles", type=int, default=defaults.particles, help="(default: %(default)s)")
    p.add_argument("--budget-ms", type=float, default=defaults.budget_ms, help="hard time budget per planning call")
    p.add_argument("--disagreement-threshold", type=float, default=defaults.disagreement_threshold,
                   help="fall back above this")
    p.add_argument("--disagreement-penalty", type=float, default=defaults.disagreement_penalty,
                   help="cost per unit of ensemble disagreement (default: %(default)s)")
    add_planner_setting_option(p)


def add_planner_setting_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--planner-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the planner's own (repeatable; defaults: its config's): CEM elites, alpha, "
                        "init_std, noise_beta; MPPI temperature, noise_std, noise_beta; gradient lr, init_std")


def planner_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``--planner-opt KEY=VALUE`` pairs as a dict (values read as JSON numbers or booleans where they
    parse), checked against ``--planner``'s own settings."""
    from planners import settings_arguments

    settings: dict[str, Any] = {}
    for item in args.planner_opt:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--planner-opt takes KEY=VALUE, got {item!r}")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    settings_arguments(args.planner, settings)  # checked now, before a model is loaded
    return settings


def plan_config(args: argparse.Namespace) -> PlanConfig:
    """The ``PlanConfig`` the options of ``add_plan_options`` describe (``--seed`` seeds the planner)."""
    return PlanConfig(horizon=args.horizon, samples=args.samples, iterations=args.iterations,
                      propagation=args.propagation, particles=args.particles, budget_ms=args.budget_ms,
                      disagreement_threshold=args.disagreement_threshold,
                      disagreement_penalty=args.disagreement_penalty, seed=args.seed)
