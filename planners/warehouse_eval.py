"""The closed loop on a warehouse floor: a fleet planner drives every robot at 10 Hz, the floor counts.

Dimensions: ``T`` ticks, ``N`` robots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from planners.fleet_cem import FleetPlan
from planners.fleet_rollout import FloorState
from planners.fleet_shield import AGENT_CONTACT, SHELF, FleetShield
from planners.warehouse_costs import WarehouseCosts
from worldmodel.envs.warehouse import DT, POS_DIMS, WarehouseFloor

_HOUR_S = 3600.0


class FleetPlanner(Protocol):
    def plan(self, state: FloorState, warm_start: torch.Tensor | None = None) -> FleetPlan:
        ...


@dataclass(frozen=True)
class FleetEvalResult:
    """What one closed-loop run on a floor counted."""

    robots: int
    """N."""
    humans: int
    """Uncontrolled walkers on the floor."""
    ticks: int
    """T, floor steps run (``DT`` seconds each)."""
    collisions: int
    """Robot-robot and robot-human contacts summed over robots and ticks (a robot pair in contact counts
    once for each robot, as the floor counts per robot)."""
    shelf_collisions: int
    """Shelf and wall contacts summed over robots and ticks."""
    deliveries: int
    """Deliveries of all robots."""
    plan_ms: float
    """Mean wall time of one planning call for the whole floor."""
    plan_ms_p95: float
    """95th percentile of it."""
    paths: np.ndarray
    """(T + 1, N, 2) robot positions, before the first tick and after each (``warehouse_render.draw_floor``)."""
    path_collisions: np.ndarray
    """(T + 1, N) contacts aligned with ``paths`` (none before the first tick)."""
    shielded_agent_contact: int = 0
    """Robot-ticks the shield flagged for a predicted contact with a robot or human (0 without a shield); it
    replaced their action unless every alternative looked worse."""
    shielded_shelf: int = 0
    """Robot-ticks it flagged for a predicted shelf or wall contact."""
    shield_ms: float = 0.0
    """Mean wall time of one shield check for the whole floor, beside ``plan_ms`` (0 without a shield)."""

    @property
    def shielded(self) -> int:
        """Robot-ticks the shield flagged, for either constraint."""
        return self.shielded_agent_contact + self.shielded_shelf

    @property
    def robot_hours(self) -> float:
        return self.robots * self.ticks * DT / _HOUR_S

    @property
    def collisions_per_robot_hour(self) -> float:
        return self.collisions / self.robot_hours

    @property
    def shelf_collisions_per_robot_hour(self) -> float:
        return self.shelf_collisions / self.robot_hours

    @property
    def deliveries_per_hour(self) -> float:
        """The floor's throughput."""
        return self.deliveries / (self.ticks * DT / _HOUR_S)

    def summary(self) -> dict[str, float]:
        """The headline numbers, for tables and logs."""
        return {"robots": self.robots, "ticks": self.ticks, "collisions_per_robot_hour": self.collisions_per_robot_hour,
                "shelf_collisions": self.shelf_collisions, "deliveries_per_hour": self.deliveries_per_hour,
                "plan_ms": self.plan_ms, "plan_ms_p95": self.plan_ms_p95, "shielded_agent_contact":
                self.shielded_agent_contact, "shielded_shelf": self.shielded_shelf, "shield_ms": self.shield_ms}


def run_floor(planner: FleetPlanner, floor: WarehouseFloor, costs: WarehouseCosts, ticks: int,
              seed: int | None = None, warmup: int = 1, shield: FleetShield | None = None) -> FleetEvalResult:
    """Reset ``floor`` with ``seed`` and let ``planner`` drive all its robots for ``ticks`` ticks.

    Each tick: the floor's observations and humans become a ``FloorState``, one planning call for all
    robots (warm-started from the previous plan, shifted), the plan through ``shield`` when given (its
    actions replace the planner's; the planner still warm-starts from its own plan), one floor step. The
    first ``warmup`` calls (untimed, not stepped) let the planner settle its allocations before timing starts.

    Raises:
        ValueError: ``ticks`` < 1, or ``costs`` built for another layout.
    """
    if ticks < 1:
        raise ValueError(f"ticks must be >= 1, got {ticks}")
    if costs.layout is not floor.layout:
        raise ValueError("costs must be built for the floor's layout (WarehouseCosts(floor.layout))")
    device = costs.rects.device
    obs, info = floor.reset(seed=seed)
    for _ in range(warmup):
        planner.plan(FloorState.from_floor(obs, info, costs, device))
    paths, contacts, times, guard = [obs[:, POS_DIMS].copy()], [np.zeros(floor.robots, np.int64)], [], _Guard(shield)
    shelf = deliveries = 0
    warm = None
    for _ in range(ticks):  # ticks of the floor: every robot planned and stepped at once
        start = time.perf_counter()
        state = FloorState.from_floor(obs, info, costs, device)
        plan = planner.plan(state, warm)
        times.append((time.perf_counter() - start) * 1000)
        warm = plan.shift()
        obs, _, _, _, info = floor.step(guard(state, plan).cpu().numpy())
        paths.append(obs[:, POS_DIMS].copy())
        contacts.append(np.asarray(info["collisions"]))
        shelf += int(np.sum(info["shelf_collisions"]))
        deliveries += int(np.sum(info["deliveries"]))
    collisions = np.stack(contacts)
    return FleetEvalResult(floor.robots, floor.humans, ticks, int(collisions.sum()), shelf, deliveries,
                           float(np.mean(times)), float(np.percentile(times, 95)), np.stack(paths), collisions,
                           *guard.totals())


class _Guard:
    """The loop's shield (or none): the actions each tick, the shielded robot-ticks and the checks' time."""

    def __init__(self, shield: FleetShield | None) -> None:
        self.shield, self.counts, self.times = shield, {AGENT_CONTACT: 0, SHELF: 0}, []

    def __call__(self, state: FloorState, plan: FleetPlan) -> torch.Tensor:
        """(N, A) the actions to take."""
        if self.shield is None:
            return plan.actions
        start = time.perf_counter()
        answer = self.shield.check(state, plan.plan)
        self.times.append((time.perf_counter() - start) * 1000)
        self.counts = {code: n + answer.counts()[code] for code, n in self.counts.items()}
        return answer.actions

    def totals(self) -> tuple[int, int, float]:
        """(agent-contact robot-ticks, shelf robot-ticks, mean ms per check)."""
        ms = float(np.mean(self.times)) if self.times else 0.0
        return self.counts[AGENT_CONTACT], self.counts[SHELF], ms
