"""The fleet planners and the two baselines they are measured against, on the same tasks and costs.

- ``coordinated``: the joint rollout through the multi-agent model (``FleetRollout``), each robot's samples
  beside the others' current plans, collision costs between the robots' predicted positions and against the
  humans' predictions.
- ``independent`` (baseline a): every robot planned alone through the per-agent model, progress and
  shelf costs only: today's per-robot planning.
- ``constant_velocity`` (baseline b): per-agent planning plus a collision cost against each
  neighbour in the robot's slots, predicted at constant velocity from the slot.

All three are ``FleetCEM`` (today's CEM per robot: one Gaussian each, own elites); only the scorer
differs. Shapes: ``K`` candidates, ``N`` robots, ``H`` horizon, ``M`` slots, ``S`` observation.
"""

from __future__ import annotations

import torch

from planners.cem import CEMConfig
from planners.fleet_cem import FLEET_CEM, FleetCEM, FleetPlanConfig
from planners.fleet_rollout import FleetDynamics, FleetRollout, FloorState, by_member, from_member, padded, ts1_sample
from planners.warehouse_costs import WarehouseCosts
from worldmodel.envs.warehouse_features import slot_agents
from worldmodel.envs.warehouse import DT, KIND_NONE, POS_DIMS


class AgentRollout:
    """Scores (K, N, H, A) candidates robot by robot through a per-agent model (obs, action) -> (E, B, S).

    Each robot's rollout sees only its own predicted observations; with ``neighbours`` its slots'
    agents at plan time move on at constant velocity and near approaches to them cost as in the
    coordinated planner.
    """

    def __init__(self, dynamics: torch.nn.Module, costs: WarehouseCosts, neighbours: bool) -> None:
        self.dynamics, self.costs, self.neighbours = dynamics, costs, neighbours
        self.members = int(dynamics.members)

    @torch.no_grad()
    def returns(self, state: FloorState, actions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Each robot's predicted return for each of its candidates: (K, N)."""
        k, n, h, _ = actions.shape
        acts, e = padded(actions, self.members), self.members
        kp = acts.shape[0]
        obs = state.obs.expand(kp, *state.obs.shape)  # (Kp, N, S)
        noise = torch.randn(h, e, kp // e * n, obs.shape[-1], generator=generator, device=obs.device)
        others_pos, others_vel, kind = slot_agents(state.obs)  # (N, M, 2), (N, M, 2), (N, M)
        filled = kind != KIND_NONE
        total = obs.new_zeros(kp, n)
        for t in range(h):  # the horizon; robots, candidates and members at once
            pred = self.dynamics(by_member(obs, e), by_member(acts[:, :, t], e))  # (E, Kp/E*N, S)
            obs = from_member(ts1_sample(pred, noise[t]), kp)  # (Kp, N, S)
            pos = obs[..., POS_DIMS]
            total += self.costs.progress(pos, state.target) + self.costs.shelves(pos)
            if self.neighbours:
                ahead = others_pos + others_vel * ((t + 1) * DT)  # (N, M, 2)
                gap = (pos[..., None, :] - ahead).norm(dim=-1).masked_fill(~filled, float("inf"))  # (Kp, N, M)
                total += self.costs.agents(gap)
        return total[:k]


def coordinated(fleet_model: FleetDynamics, costs: WarehouseCosts, cfg: FleetPlanConfig = FleetPlanConfig(),
                cem: CEMConfig = FLEET_CEM) -> FleetCEM:
    """Joint planning through the multi-agent model, with collision costs between the robots' plans: each
    robot's samples scored beside the others' current plans (``FleetRollout(against_plans=True)``)."""
    return FleetCEM(FleetRollout(fleet_model, costs, against_plans=True), cfg, cem, costs.rects.device)


def independent(agent_model: torch.nn.Module, costs: WarehouseCosts, cfg: FleetPlanConfig = FleetPlanConfig(),
                cem: CEMConfig = FLEET_CEM) -> FleetCEM:
    """Baseline (a): every robot alone through the per-agent model, no collision cost."""
    return FleetCEM(AgentRollout(agent_model, costs, neighbours=False), cfg, cem, costs.rects.device)


def constant_velocity(agent_model: torch.nn.Module, costs: WarehouseCosts, cfg: FleetPlanConfig = FleetPlanConfig(),
                      cem: CEMConfig = FLEET_CEM) -> FleetCEM:
    """Baseline (b): per-agent planning with collision costs against the slots' constant-velocity predictions."""
    return FleetCEM(AgentRollout(agent_model, costs, neighbours=True), cfg, cem, costs.rects.device)
