"""A served warehouse: each site's robots planned jointly through the multi-agent model, numpy in and out.

The ensemble workers and the Serve planner deployment host this in place of ``planners.service.FleetPlanner``
when the model was trained on Warehouse-v1 (``planners.service.load_planner``). A batch may mix sites (floors
of the served layout); the robots of one site are one ``FleetCEM`` call (``ServiceConfig.fleet``), their
answers checked by the fleet shield and returned in the batch's order. A site's planner knows what its robots'
observations say: each robot's position, velocity and task, and the agents in its slots: humans, and robots of
the site that did not ask in this batch, both predicted at constant velocity.

Shapes: ``N`` robots in the batch, ``n`` of one site, ``U`` other agents, ``H`` horizon, ``S`` observation,
``A`` action, ``E`` members, ``M`` slots.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from planners.base import Decision, Fallback, shift_plan
from planners.constraints import Constraint
from planners.fleet_baselines import coordinated
from planners.fleet_cem import ACT_DIM
from planners.fleet_rollout import FloorState, FleetRollout
from planners.fleet_shield import FleetShield, FleetShieldConfig
from planners.policy import PolicyNet
from planners.served import PlanBatch, ServiceConfig, empty_batch
from planners.warehouse_costs import WarehouseCosts
from worldmodel.envs.warehouse import (ACCEL, DT, KIND_HUMAN, KIND_ROBOT, OBS_DIM, PHYS_DIMS, POS_DIMS, TASK_DIMS,
                                       VEL_DIMS, WAREHOUSE_ID)
from worldmodel.envs.warehouse_features import first_sightings, slot_agents
from worldmodel.envs.warehouse_layout import layout_for
from worldmodel.fleet_dynamics import FleetEnsemble
from worldmodel.fleet_data import match_neighbour_actions, warehouse_layout
from worldmodel.model import WorldModel

SAME_AGENT_M = 1e-3
"""Slot agents closer than this (metres) are one agent seen by several robots."""
DEFAULT_SITE = ""
"""The site of requests that name none: they share one floor."""


def is_fleet_model(model: WorldModel) -> bool:
    """Whether ``model`` plans robots jointly: Warehouse-v1 with the multi-agent dynamics."""
    return model.spec.env_id == WAREHOUSE_ID and isinstance(model.dynamics, FleetEnsemble)


def floor_state(obs: torch.Tensor, costs: WarehouseCosts) -> FloorState:
    """A site's ``FloorState`` from its robots' observations (n, S) alone.

    The other agents are the slot entries that are not robots of ``obs`` (humans, and robots that did not
    ask), each once however many robots see it; they move at their observed velocity in the rollouts.
    """
    pos, vel, kind = (x.flatten(0, 1) for x in slot_agents(obs))  # (n*M, 2), (n*M, 2), (n*M,)
    sensed = (kind == KIND_HUMAN) | (kind == KIND_ROBOT)
    asked = (torch.cdist(pos, obs[:, POS_DIMS], compute_mode="donot_use_mm_for_euclid_dist").amin(1) < SAME_AGENT_M
             if len(obs) else sensed)  # a robot of obs (exact distances: see ``first_sightings``)
    first = first_sightings(pos, sensed & ~asked, SAME_AGENT_M)  # each other agent once
    return FloorState(obs, pos[first], vel[first], costs.targets(obs[:, TASK_DIMS]))


def brake(obs: torch.Tensor) -> torch.Tensor:
    """(n, A) the action that stops each robot as fast as its acceleration allows."""
    return (-obs[:, VEL_DIMS] / (ACCEL * DT)).clamp(-1.0, 1.0)


class WarehousePlanner:
    """Plans the robots of warehouse sites with one fleet model version (the served ``FleetPlanner``'s API).

    Args:
        model: a Warehouse-v1 world model with fleet dynamics (``ModelConfig.dynamics`` 'fleet').
        cfg: service settings: ``fleet`` the floor planner's, ``floor_robots`` the floor's (``layout_for``),
            ``shield`` the fleet shield on or off; the lone-agent planner settings (``plan``, ``planner``) do
            not apply to a floor.
        policy: the model's policy (``wm policy train`` on a fleet model): it sees each robot's neighbours in
            its observation's slots, and acts for the robots the fallback answers; None: they brake.
        shield: the fleet shield's settings.
    """

    recurrent = False
    hidden_size = 0

    def __init__(self, model: WorldModel, cfg: ServiceConfig | None = None, policy: PolicyNet | None = None,
                 shield: FleetShieldConfig = FleetShieldConfig()) -> None:
        self.model, self.policy = model, None if policy is None else policy.to(model.device).eval()
        self.cfg = cfg = cfg or ServiceConfig()
        self.fleet, self.robots = cfg.fleet, cfg.floor_robots
        self.costs = WarehouseCosts(layout_for(self.robots), device=model.device)
        self.planner = coordinated(model.dynamics, self.costs, self.fleet)
        self.rollout = FleetRollout(model.dynamics, self.costs)
        self.shield = FleetShield(model.dynamics, self.costs, shield) if self.cfg.shield else None
        self._ms_per_robot = 0.0
        """The last site call's wall time per robot: whether the next fits a request's budget."""

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def fallback_source(self) -> str:
        """Who acts for a robot the fallback answers: 'policy', or 'brake' without one."""
        return "brake" if self.policy is None else "policy"

    @property
    def objectives(self) -> tuple[str, ...]:
        return ("learned",)

    @property
    def obs_dim(self) -> int:
        return OBS_DIM

    @property
    def horizon(self) -> int:
        return self.fleet.horizon

    def describe(self) -> dict[str, Any]:
        """What is served (``FleetPlanner.describe``'s keys, and the floor)."""
        spec, layout = self.model.spec, self.costs.layout
        return {"model_version": self.version, "env_id": spec.env_id, "obs_dim": self.obs_dim,
                "act_dim": spec.act_dim, "objectives": list(self.objectives), "zones": False, "sites": True,
                "planner": "coordinated", "planner_settings": {"samples": self.fleet.samples,
                                                               "iterations": self.fleet.iterations},
                "horizon": self.horizon, "prior_share": 0.0, "modes": ["plan"],
                "policy": None if self.policy is None else {"config": self.policy.cfg.to_dict()},
                "shield": None if self.shield is None else self.shield.cfg.horizon,
                "fallback_action_by": self.fallback_source, "device": str(self.model.device),
                "floor": {"robots": self.robots, "width": layout.width, "height": layout.height}}

    def warmup(self, sizes: tuple[int, ...] = (1, 8)) -> None:
        """Plan once untimed at a few fleet sizes (the distance fields are built on construction)."""
        layout = self.costs.layout
        for n in sizes:
            obs = np.zeros((n, OBS_DIM), np.float32)
            obs[:, POS_DIMS] = obs[:, TASK_DIMS] = layout.picks[np.arange(n) % len(layout.picks)]
            obs[:, POS_DIMS.start] += np.arange(n)  # apart, so the warm-up fleet is not in contact
            self.plan(obs)

    @torch.no_grad()
    def plan(self, obs: np.ndarray, warm_start: np.ndarray | None = None, objectives: list[str] | None = None,
             constraints: dict[str, np.ndarray] | None = None, budget_ms: float | None = None,
             hidden: np.ndarray | None = None, modes: list[str] | None = None,
             sites: list[str | None] | None = None) -> PlanBatch:
        """Decide for N robots: one joint plan per site (``FleetPlanner.plan``'s arguments and answer).

        Args:
            obs: (N, S) the robots' observations.
            warm_start: (N, H, A) their previous plans shifted, NaN rows where a robot has none.
            sites: per robot, the site (floor) it is on; None or absent: ``DEFAULT_SITE``.
            budget_ms: a site whose last call's time per robot says it would not fit gets the fallback's actions.
            objectives, constraints, hidden, modes: only the defaults ('learned', none, none, 'plan') exist here.
        """
        start = time.perf_counter()
        n = len(obs)
        self._check(n, obs, objectives, constraints, modes, sites)
        obs_t = torch.as_tensor(np.asarray(obs, np.float32), device=self.model.device)
        out = empty_batch(n, self.horizon, OBS_DIM, ACT_DIM)
        names = np.asarray([DEFAULT_SITE if s is None else s for s in (sites or [None] * n)], dtype=object)
        for site in dict.fromkeys(names):  # sites are separate floors: one joint call each
            rows = np.flatnonzero(names == site)
            late = budget_ms is not None and self._ms_per_robot * len(rows) > budget_ms
            self._decide_site(out, rows, obs_t, warm_start, late)
        return PlanBatch(**out, hidden=None, iterations=self.fleet.iterations,
                         elapsed_ms=(time.perf_counter() - start) * 1000, model_version=self.version,
                         fallback_source=self.fallback_source)

    def _check(self, n: int, obs: np.ndarray, objectives: list[str] | None, constraints: dict[str, Any] | None,
               modes: list[str] | None, sites: list[str | None] | None) -> None:
        """Raise naming what a warehouse batch cannot take."""
        if np.shape(obs) != (n, OBS_DIM):
            raise ValueError(f"obs must be (N, {OBS_DIM}), got {np.shape(obs)}")
        for name, given, allowed in (("objective", objectives, "learned"), ("mode", modes, "plan")):
            wrong = sorted(set(given or []) - {allowed})
            if wrong:
                raise ValueError(f"{name} {wrong[0]!r} is not served for Warehouse-v1; it plans {allowed!r} only")
        if constraints:
            raise ValueError(f"constraints {sorted(constraints)} are not taken by Warehouse-v1 models: the floor's "
                             "shelves, robots and humans are its constraints")
        if sites is not None and len(sites) != n:
            raise ValueError(f"sites must have one entry per robot ({n}), got {len(sites)}")

    def _decide_site(self, out: dict[str, np.ndarray], rows: np.ndarray, obs: torch.Tensor,
                     warm_start: np.ndarray | None, late: bool) -> None:
        """Plan, check and write one site's robots at ``rows`` of the batch."""
        begin = time.perf_counter()
        state = floor_state(obs[torch.as_tensor(rows, device=obs.device)], self.costs)
        if late:  # the plan would not fit the budget: the fallback acts for every robot of the site
            actions = brake(state.obs) if self.policy is None else self.policy.act(state.obs)
            plan = actions[:, None].expand(-1, self.horizon, -1)
            out["fallback_reason"][rows], out["decision"][rows] = Fallback.DEADLINE, Decision.FALLBACK
            out["expected_return"][rows] = np.nan
        else:
            result = self.planner.plan(state, self._warm(warm_start, rows, state.obs))
            actions, plan = result.actions, result.plan
            out["expected_return"][rows] = result.expected_return.cpu().numpy()
        if self.shield is not None:
            checked = self.shield.check(state, plan)
            replaced = checked.choice != 0  # flagged robots whose every alternative looked worse keep their plan
            actions = checked.actions
            plan = torch.where(replaced[:, None, None], actions[:, None].expand_as(plan), plan)
            replaced_np = replaced.cpu().numpy()
            out["shield"][rows] = np.where(replaced_np, checked.constraint.cpu().numpy(), Constraint.NONE)
            out["decision"][rows] = np.where(replaced_np, Decision.SHIELDED, out["decision"][rows])
        paths = self._member_paths(state, plan)  # (E, n, H+1, 2)
        out["actions"][rows] = actions.cpu().numpy()
        out["warm_start"][rows] = shift_plan(plan).cpu().numpy()
        trajectory = np.full((len(rows), self.horizon + 1, OBS_DIM), np.nan, np.float32)
        trajectory[:, 0] = state.obs.cpu().numpy()
        trajectory[:, 1:, POS_DIMS] = paths.mean(0)[:, 1:].cpu().numpy()  # where the robots will be
        out["trajectory"][rows] = trajectory
        out["disagreement"][rows] = paths[..., 1:, :].std(0, unbiased=False).norm(dim=-1).mean(1).cpu().numpy()
        self._ms_per_robot = (time.perf_counter() - begin) * 1000 / len(rows)

    def _warm(self, warm_start: np.ndarray | None, rows: np.ndarray, obs: torch.Tensor) -> torch.Tensor | None:
        """The site's warm starts (n, H, A): zeros for robots without one; None when none has one."""
        if warm_start is None or np.shape(warm_start)[1:] != (self.horizon, ACT_DIM):
            return None
        w = torch.as_tensor(np.asarray(warm_start, np.float32)[rows], device=obs.device)
        return torch.nan_to_num(w, nan=0.0)

    def _member_paths(self, state: FloorState, plan: torch.Tensor) -> torch.Tensor:
        """(E, n, H+1, 2) every member's mean predicted positions along the site's joint plan (n, H, A)."""
        e = self.rollout.members
        return self.rollout.trace(state, plan[None].expand(e, -1, -1, -1), sample=False).paths

    def score(self, obs: np.ndarray, actions: np.ndarray, new_obs: np.ndarray) -> dict[str, Any]:
        """Prediction error of B logged transitions of one tick of a floor (each slot's robot matched among
        the rows, as ``worldmodel.fleet_data`` does): the physical state's error per row and its mean."""
        errors = self.prediction_error(obs, actions, new_obs)
        return {"model_version": self.version, "errors": errors, "mean_error": float(errors.mean())}

    @torch.no_grad()
    def prediction_error(self, obs: np.ndarray, actions: np.ndarray, new_obs: np.ndarray) -> np.ndarray:
        """(B,) Euclidean distance of the ensemble's mean next physical state from ``new_obs``'s."""
        obs, actions = np.asarray(obs, np.float32), np.asarray(actions, np.float32)
        b, device = len(obs), self.model.device
        neighbours = match_neighbour_actions(np.full(b, "tick"), np.zeros(b, np.int64), obs, actions,
                                             warehouse_layout())
        t = lambda x: torch.as_tensor(x, device=device)  # noqa: E731
        mean = self.model.dynamics(t(obs), t(actions), t(neighbours)).mean.mean(0)  # (B, P)
        return (mean - t(np.asarray(new_obs, np.float32)[:, PHYS_DIMS])).norm(dim=-1).cpu().numpy()

    def explain(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("explanations are for lone-agent models; a warehouse robot's plan is its site's joint plan")
