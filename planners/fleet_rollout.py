"""Joint rollouts of a warehouse fleet: K candidate plans for all N robots of a floor, stepped together.

Each step rebuilds every robot's observation with ``warehouse_features.observe`` from the joint
predicted positions (and the humans' constant-velocity predictions), gathers each slot's neighbour
action from the slot robot's own candidate action at that step, and asks the multi-agent model for
every robot's next physical state: candidate k follows member k mod E (TS-1). Costs per robot and
step come from the joint predicted positions. One batched program: (K, N, ...) tensors, a loop over
the H steps only.

Shapes: ``K`` candidates, ``N`` robots, ``U`` humans, ``O = N + U`` sensed agents, ``H`` horizon,
``E`` members, ``M`` slots, ``S`` observation, ``P`` physical state, ``A`` action.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import numpy as np
import torch

from planners.warehouse_costs import WarehouseCosts
from worldmodel.dynamics import Prediction
from worldmodel.envs.warehouse import (ACCEL, DT, KIND_HUMAN, KIND_NONE, KIND_ROBOT, MAX_SPEED, NEIGHBOUR_DIMS, NEIGHBOURS,
                                       OBS_DIM, PHYS_DIMS, POS_DIMS, ROBOT_RADIUS, SLOT_KIND, SLOT_POS, SLOT_SIZE,
                                       SLOT_VEL, TASK_DIMS, VEL_DIMS)
from worldmodel.envs.warehouse_layout import Layout
from worldmodel.envs.warehouse_features import observe


class FleetDynamics(Protocol):
    """What the joint rollout steps: ``FleetEnsemble``'s signature."""

    members: int

    def __call__(self, obs: torch.Tensor, action: torch.Tensor, neighbour_actions: torch.Tensor) -> Prediction:
        """(E, B, S), (E, B, A), (E, B, M, A) -> next physical state, mean and var (E, B, P)."""
        ...


@dataclass(frozen=True)
class FloorState:
    """What a fleet planner knows of a floor at one tick."""

    obs: torch.Tensor
    """(N, S) every robot's observation."""
    humans_pos: torch.Tensor
    """(U, 2) the humans' positions."""
    humans_vel: torch.Tensor
    """(U, 2) their velocities (the planners predict them at constant velocity)."""
    target: torch.Tensor
    """(N,) long: each robot's distance field (``WarehouseCosts.targets`` of its task point)."""

    def __post_init__(self) -> None:
        n, u = self.obs.shape[0], self.humans_pos.shape[0]
        if self.obs.shape != (n, OBS_DIM) or self.target.shape != (n,):
            raise ValueError(f"obs must be (N, {OBS_DIM}) and target (N,), got {tuple(self.obs.shape)} and "
                             f"{tuple(self.target.shape)}")
        if self.humans_pos.shape != (u, 2) or self.humans_vel.shape != (u, 2):
            raise ValueError(f"humans_pos and humans_vel must be (U, 2), got {tuple(self.humans_pos.shape)} and "
                             f"{tuple(self.humans_vel.shape)}")

    @classmethod
    def from_floor(cls, obs: np.ndarray, info: Mapping[str, Any], costs: WarehouseCosts,
                   device: torch.device | str = "cpu") -> "FloorState":
        """From ``WarehouseFloor``'s observation (N, S) and info (``humans_pos``, ``humans_vel``)."""
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
        o = t(obs)
        return cls(o, t(info["humans_pos"]).reshape(-1, 2), t(info["humans_vel"]).reshape(-1, 2),
                   costs.targets(o[:, TASK_DIMS]))

    def humans_at(self, step: int) -> torch.Tensor:
        """(U, 2) the humans' predicted positions ``step`` ticks ahead."""
        return self.humans_pos + self.humans_vel * (step * DT)


def by_member(x: torch.Tensor, members: int) -> torch.Tensor:
    """Candidates dealt to members, candidate k to member k mod E: (K, N, *D) -> (E, K/E * N, *D)."""
    k, rest = x.shape[0], x.shape[1:]
    return x.reshape(k // members, members, *rest).transpose(0, 1).reshape(members, -1, *rest[1:])


def from_member(x: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of ``by_member``: (E, K/E * N, *D) -> (K, N, *D)."""
    e = x.shape[0]
    return x.reshape(e, k // e, -1, *x.shape[2:]).transpose(0, 1).reshape(k, -1, *x.shape[2:])


def padded(actions: torch.Tensor, members: int) -> torch.Tensor:
    """(K, ...) candidates padded with repeats of the first ones to a multiple of ``members``."""
    pad = (-actions.shape[0]) % members
    return torch.cat([actions, actions[torch.arange(pad, device=actions.device) % actions.shape[0]]]) if pad else actions


def ts1_sample(pred: Prediction, noise: torch.Tensor) -> torch.Tensor:
    """Each member's draw (E, B, D) from its Gaussian; ``noise`` standard normal of that shape."""
    var = pred.var * torch.as_tensor(pred.scale, dtype=pred.var.dtype, device=pred.var.device)
    return pred.mean + var.clamp_min(0).sqrt() * noise


class FleetRollout:
    """Scores joint candidates (K, N, H, A) from a ``FloorState`` through a multi-agent model."""

    def __init__(self, dynamics: FleetDynamics, costs: WarehouseCosts) -> None:
        self.dynamics, self.costs, self.members = dynamics, costs, int(dynamics.members)

    @torch.no_grad()
    def returns(self, state: FloorState, actions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Each robot's own predicted return in each joint candidate: (K, N)."""
        return self.run(state, actions, generator)[0]

    @torch.no_grad()
    def run(self, state: FloorState, actions: torch.Tensor,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (K, N) and the predicted positions (K, N, H+1, 2) of every robot in every candidate."""
        k, n, h, a = actions.shape
        acts = padded(actions, self.members)  # (Kp, N, H, A)
        kp, u, e = acts.shape[0], len(state.humans_pos), self.members
        pos = state.obs[:, POS_DIMS].expand(kp, n, 2)
        vel = state.obs[:, VEL_DIMS].expand(kp, n, 2)
        task = state.obs[:, TASK_DIMS]
        kinds = torch.cat([torch.full((n,), KIND_ROBOT), torch.full((u,), KIND_HUMAN)])  # (O,)
        noise = torch.randn(h, e, kp // e * n, PHYS_DIMS.stop - PHYS_DIMS.start, generator=generator, device=pos.device)
        total, path = pos.new_zeros(kp, n), [pos]
        none = pos.new_zeros(kp, u + 1, a)  # humans and empty slots act with zeros
        for t in range(h):  # the horizon: every robot of every candidate at once
            humans = state.humans_at(t).expand(kp, u, 2)
            obs, slot = observe(pos, vel, task, torch.cat([pos, humans], 1),
                                torch.cat([vel, state.humans_vel.expand(kp, u, 2)], 1), kinds, self.costs.layout)
            act = acts[:, :, t]  # (Kp, N, A)
            others = torch.cat([act, none], 1)  # (Kp, O + 1, A): the last row stands for empty slots
            slot = torch.where(slot < 0, n + u, slot).flatten(1)  # (Kp, N*M)
            neighbours = others.gather(1, slot[..., None].expand(-1, -1, a)).view(kp, n, -1, a)  # (Kp, N, M, A)
            pred = self.dynamics(by_member(obs, e), by_member(act, e), by_member(neighbours, e))  # (E, Kp/E*N, P)
            nxt = from_member(ts1_sample(pred, noise[t]), kp)  # (Kp, N, P)
            pos, vel = nxt[..., :2], nxt[..., 2:4]
            total += self.step_reward(pos, state.humans_at(t + 1), state.target)
            path.append(pos)
        return total[:k], torch.stack(path, 2)[:k]

    def step_reward(self, pos: torch.Tensor, humans: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each robot's reward for being at ``pos`` (K, N, 2) beside the others and ``humans`` (U, 2): (K, N)."""
        n = pos.shape[1]
        gap = torch.cdist(pos, torch.cat([pos, humans.expand(pos.shape[0], -1, 2)], 1))  # (K, N, O)
        gap[:, torch.arange(n), torch.arange(n)] = float("inf")  # a robot is not its own neighbour
        return self.costs.progress(pos, target) + self.costs.shelves(pos) + self.costs.agents(gap)


class AgentAsFleet(torch.nn.Module):
    """A per-agent model (obs, action) -> (E, B, S) behind the fleet signature: it ignores the
    neighbours' actions and the joint rollout reads its physical state (the model swap test)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.members = model, int(model.members)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, neighbour_actions: torch.Tensor) -> Prediction:
        pred = self.model(obs, action)
        scale = pred.scale[PHYS_DIMS] if torch.is_tensor(pred.scale) else pred.scale
        return Prediction(pred.mean[..., PHYS_DIMS], pred.var[..., PHYS_DIMS], scale)


class ExactFleetModel(torch.nn.Module):
    """The warehouse's own physics as a fleet model: a model with a known answer, for tests and bounds.

    From a robot's observation, its action and its slots' actions it steps the robot and the agents
    in its slots (``warehouse_physics``: integrate, contacts, shelves and walls, speed bound; no
    actuation noise), so it is exact when every agent touching the robot is in its slots and humans
    do not accelerate. Mean (E, B, P) for each of ``members`` identical members, zero variance.
    """

    def __init__(self, layout: Layout, members: int = 1, neighbours: bool = True) -> None:
        super().__init__()
        self.members, self.neighbours = members, neighbours
        self.register_buffer("rects", torch.tensor(layout.obstacles, dtype=torch.float32))

    def forward(self, obs: torch.Tensor, action: torch.Tensor, neighbour_actions: torch.Tensor | None = None) -> Prediction:
        phys = exact_step(obs, action, neighbour_actions if self.neighbours else None, self.rects)
        mean = phys.expand(self.members, *phys.shape[-2:]) if phys.dim() == 2 else phys
        return Prediction(mean, torch.zeros_like(mean))


class ExactAgentModel(ExactFleetModel):
    """The physics of a robot alone (its neighbours unseen) as a per-agent model: (obs, action) -> next obs (E, B, S),
    the physical state stepped and the rest of the observation carried over."""

    def __init__(self, layout: Layout, members: int = 1) -> None:
        super().__init__(layout, members, neighbours=False)
        self.obs_dim = OBS_DIM

    def forward(self, obs: torch.Tensor, action: torch.Tensor, neighbour_actions: torch.Tensor | None = None) -> Prediction:
        phys = super().forward(obs, action).mean  # (E, B, P)
        nxt = obs.expand(*phys.shape[:-1], OBS_DIM).clone()
        nxt[..., PHYS_DIMS] = phys
        return Prediction(nxt, torch.zeros_like(nxt))


def exact_step(obs: torch.Tensor, action: torch.Tensor, neighbour_actions: torch.Tensor | None,
               rects: torch.Tensor) -> torch.Tensor:
    """Each robot's next physical state (..., P) by the floor's physics from obs (..., S), action (..., A)
    and the slots' actions (..., M, A) (None: the robot alone)."""
    pos, vel = _integrate(obs[..., POS_DIMS], obs[..., VEL_DIMS], action)
    if neighbour_actions is not None:
        slots = obs[..., NEIGHBOUR_DIMS].unflatten(-1, (NEIGHBOURS, SLOT_SIZE))  # (..., M, 5)
        filled = slots[..., SLOT_KIND] != KIND_NONE
        other_pos, other_vel = _integrate(obs[..., None, POS_DIMS] + slots[..., SLOT_POS],
                                          obs[..., None, VEL_DIMS] + slots[..., SLOT_VEL], neighbour_actions)
        d = other_pos - pos[..., None, :]  # (..., M, 2) own -> other
        dist = d.norm(dim=-1, keepdim=True)
        normal = d / dist.clamp_min(1e-12)
        overlap = torch.relu(2 * ROBOT_RADIUS - dist) * filled[..., None]
        closing = ((other_vel - vel[..., None, :]) * normal).sum(-1, keepdim=True)
        dv = torch.where((overlap > 0) & (closing < 0), 0.5 * closing, 0.0)
        pos = pos - 0.5 * (overlap * normal).sum(-2)
        vel = vel + (dv * normal).sum(-2)
    pos, vel = _project_out(pos, vel, rects)
    return torch.cat([pos, _clamp(vel)], -1)


def _clamp(vel: torch.Tensor) -> torch.Tensor:
    return vel * (MAX_SPEED / vel.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)


def _integrate(pos: torch.Tensor, vel: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    vel = _clamp(vel + ACCEL * action.clamp(-1, 1) * DT)
    return pos + vel * DT, vel


def _project_out(pos: torch.Tensor, vel: torch.Tensor, rects: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``warehouse_layout.project_out`` for discs of ``ROBOT_RADIUS`` at pos, vel (..., 2), rects (R, 4)."""
    x, y = pos[..., 0:1], pos[..., 1:2]  # (..., 1)
    ax, ay = x - x.clamp(rects[:, 0], rects[:, 2]), y - y.clamp(rects[:, 1], rects[:, 3])  # (..., R)
    dist = torch.hypot(ax, ay)
    inside = dist == 0
    faces = torch.stack([x - rects[:, 0], rects[:, 2] - x, y - rects[:, 1], rects[:, 3] - y])  # (4, ..., R)
    exit_face = faces.argmin(0)
    out_x = torch.tensor([-1.0, 1.0, 0.0, 0.0], device=pos.device)[exit_face]
    out_y = torch.tensor([0.0, 0.0, -1.0, 1.0], device=pos.device)[exit_face]
    safe = torch.where(inside, 1.0, dist)
    nx, ny = torch.where(inside, out_x, ax / safe), torch.where(inside, out_y, ay / safe)
    depth = torch.relu(torch.where(inside, faces.amin(0) + ROBOT_RADIUS, ROBOT_RADIUS - dist))
    pos = pos + torch.stack([(depth * nx).sum(-1), (depth * ny).sum(-1)], -1)
    into = torch.clamp_max(vel[..., 0:1] * nx + vel[..., 1:2] * ny, 0.0) * (depth > 0)
    return pos, vel - torch.stack([(into * nx).sum(-1), (into * ny).sum(-1)], -1)
