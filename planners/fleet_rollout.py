"""Joint rollouts of a warehouse fleet: K candidate plans for all N robots of a floor, stepped together.

Each step rebuilds every robot's observation with ``warehouse_features.observe_nearby`` (``observe``
over the agents and shelves near the robot when the plan starts) from the joint predicted positions
(and the humans' constant-velocity predictions), gathers each slot's neighbour action from the slot
robot's own candidate action at that step, and asks the multi-agent model for every robot's next
physical state: candidate k follows member k mod E (TS-1). Costs per robot and step come from the
joint predicted positions, the pair distances shared with the observation's. One batched program:
(K, N, ...) tensors, a loop over the H steps only.

What a robot's candidate k is rolled out beside (``against_plans``): the other robots' candidate k (a
joint rollout: each row is one configuration of the floor, as the shield's alternatives are), or their
candidate 0, the plans they hold now (the planner's scorer: each robot's samples are a best response to
the others' plans, and the plans converge over the warm-started ticks). Scored in the joint rollout, a
robot's good sample loses to the swerve a neighbour happened to draw in the same row; against the plans,
on floors without bumpers (seeds 0-2, 50 robots, 600 ticks, shielded, one torch thread, a fleet model
trained on such floors' logs), collisions per robot-hour fell from 180 to 52 at the same deliveries (3,940
and 3,920 per hour). Against the plans, every row's other robots are candidate 0's, stepped through member
0 with its draws; only the robot itself follows its row's member (k mod E). A row's ``paths`` are then not
one configuration of the floor: only row 0's are.

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
from worldmodel.envs.warehouse import (ACCEL, BUMPER, DT, KIND_HUMAN, KIND_NONE, KIND_ROBOT, MAX_SPEED, NEIGHBOUR_DIMS,
                                       NEIGHBOURS, OBS_DIM, PHYS_DIMS, POS_DIMS, ROBOT_RADIUS, SLOT_KIND, SLOT_POS,
                                       SLOT_SIZE, SLOT_VEL, TASK_DIMS, VEL_DIMS)
from worldmodel.envs.warehouse_features import Sensed, nearby, observe_nearby
from worldmodel.envs.warehouse_layout import Layout
from worldmodel.envs.warehouse_physics import CONTACT_TOLERANCE


NEARBY_OTHERS = 16
"""C, the agents per robot a rollout measures (``warehouse_features.Nearby``). Measured against every agent:
on a floor of 200 robots in traffic, 30 candidates of 1.5 s plans through a trained fleet model gave the
same paths with 16 (12 changed 0.9% of the robots' returns, 8 6.7%); the features' test moves 80 robots
by up to 0.75 m and finds the same slots from 12 up."""
NEARBY_RECTS = 6
"""Q, the shelves and walls per robot a rollout measures (4 gave the same paths and slots in both checks)."""


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


def member_major(x: torch.Tensor, members: int) -> torch.Tensor:
    """Candidates (K, ...) reordered member by member (candidate k to member k mod E), so that a
    (E, K/E * ..., ...) view of the result is ``by_member``'s without a copy per step."""
    return x.unflatten(0, (-1, members)).transpose(0, 1).flatten(0, 1)


def candidate_major(x: torch.Tensor, members: int) -> torch.Tensor:
    """Inverse of ``member_major``: (K, ...) back in candidate order."""
    return x.unflatten(0, (members, -1)).transpose(0, 1).flatten(0, 1)


def padded(actions: torch.Tensor, members: int) -> torch.Tensor:
    """(K, ...) candidates padded with repeats of the first ones to a multiple of ``members``."""
    pad = (-actions.shape[0]) % members
    return torch.cat([actions, actions[torch.arange(pad, device=actions.device) % actions.shape[0]]]) if pad else actions


def ts1_sample(pred: Prediction, noise: torch.Tensor) -> torch.Tensor:
    """Each member's draw (E, B, D) from its Gaussian; ``noise`` standard normal of that shape."""
    var = pred.var * torch.as_tensor(pred.scale, dtype=pred.var.dtype, device=pred.var.device)
    return pred.mean + var.clamp_min(0).sqrt() * noise


@dataclass(frozen=True)
class RolloutTrace:
    """What a joint rollout predicts for every candidate, robot and step (``FleetRollout.trace``)."""

    returns: torch.Tensor
    """(K, N) each robot's own predicted return."""
    paths: torch.Tensor
    """(K, N, H+1, 2) the predicted positions, now first."""
    agent_dist: torch.Tensor
    """(K, N, H) centre distance to the nearest measured agent after each step (inf: none in range)."""
    shelf_gap: torch.Tensor
    """(K, N, H) centre distance to the nearest measured shelf or wall after each step."""


class FleetRollout:
    """Scores joint candidates (K, N, H, A) from a ``FloorState`` through a multi-agent model: each robot's
    candidate k beside the others' candidate k, or with ``against_plans`` beside their candidate 0 (the module
    docstring says when each).

    Each call first picks every robot's ``others`` nearest agents and ``rects`` nearest shelves and walls
    (``warehouse_features.nearby``); its steps measure only those, and share the pair distances
    between the observations' slots and the proximity costs. With both at least the floor's agents and
    rectangles the rollout is ``observe``'s exactly.
    """

    def __init__(self, dynamics: FleetDynamics, costs: WarehouseCosts, others: int = NEARBY_OTHERS,
                 rects: int = NEARBY_RECTS, against_plans: bool = False) -> None:
        self.dynamics, self.costs, self.members = dynamics, costs, int(dynamics.members)
        self.others, self.rects = others, rects
        self.against_plans = against_plans

    @torch.no_grad()
    def returns(self, state: FloorState, actions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Each robot's own predicted return in each joint candidate: (K, N)."""
        return self.run(state, actions, generator)[0]

    @torch.no_grad()
    def run(self, state: FloorState, actions: torch.Tensor,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (K, N) and the predicted positions (K, N, H+1, 2) of every robot in every candidate."""
        trace = self.trace(state, actions, generator)
        return trace.returns, trace.paths

    @torch.no_grad()
    def trace(self, state: FloorState, actions: torch.Tensor, generator: torch.Generator | None = None,
              sample: bool = True) -> RolloutTrace:
        """``run`` with the clearances of every step; ``sample`` False follows each member's mean (no noise)."""
        k, n, h, a = actions.shape
        e, u, p = self.members, len(state.humans_pos), PHYS_DIMS.stop - PHYS_DIMS.start
        acts = member_major(padded(actions, e), e)  # (Kp, N, H, A), member 0's candidates first
        kp = acts.shape[0]
        pos, vel = state.obs[:, POS_DIMS].expand(kp, n, 2), state.obs[:, VEL_DIMS].expand(kp, n, 2)
        task = state.obs[:, TASK_DIMS]
        kinds = torch.cat([torch.full((n,), KIND_ROBOT), torch.full((u,), KIND_HUMAN)]).to(pos.device)  # (O,)
        near = nearby(state.obs[:, POS_DIMS], torch.cat([state.obs[:, POS_DIMS], state.humans_pos]), self.costs.layout,
                      self.others, self.rects)

        plans = self.against_plans  # the other robots are candidate 0's (row 0 of the member-major order)

        def sense(t: int, pos: torch.Tensor, vel: torch.Tensor) -> Sensed:  # every robot of every candidate at tick t
            opos, ovel = (pos[:1].expand(kp, n, 2), vel[:1].expand(kp, n, 2)) if plans else (pos, vel)
            return observe_nearby(pos, vel, task, torch.cat([opos, state.humans_at(t).expand(kp, u, 2)], 1),
                                  torch.cat([ovel, state.humans_vel.expand(kp, u, 2)], 1), kinds, near)

        shape = (h, e, kp // e * n, p)
        noise = torch.randn(shape, generator=generator, device=pos.device) if sample else pos.new_zeros(shape)
        total, path, sensed = pos.new_zeros(kp, n), [pos], sense(0, pos, vel)
        agent_dist, shelf_gap = [], []
        none = pos.new_zeros(kp, u + 1, a)  # humans and empty slots (the last row) act with zeros
        for t in range(h):  # the horizon: every robot of every candidate at once
            act = acts[:, :, t]  # (Kp, N, A)
            slot = torch.where(sensed.slot_index < 0, n + u, sensed.slot_index).flatten(1)  # (Kp, N*M)
            others = torch.cat([act[:1].expand(kp, n, a) if plans else act, none], 1)  # (Kp, O + 1, A)
            neighbours = others.gather(1, slot[..., None].expand(-1, -1, a))  # (Kp, N*M, A)
            pred = self.dynamics(sensed.obs.view(e, -1, OBS_DIM), act.reshape(e, -1, a),
                                 neighbours.view(e, -1, NEIGHBOURS, a))  # (E, Kp/E*N, P)
            nxt = ts1_sample(pred, noise[t]).view(kp, n, p)
            pos, vel = nxt[..., :2], nxt[..., 2:4]
            sensed = sense(t + 1, pos, vel)  # the next step's observation; its distances cost this step
            total += (self.costs.progress(pos, state.target) + self.costs.shelf_gaps(sensed.rect_gap)
                      + self.costs.agents(sensed.others_dist))
            path.append(pos)
            agent_dist.append(sensed.others_dist.amin(-1))  # (Kp, N)
            shelf_gap.append(sensed.rect_gap.amin(-1))
        order = candidate_major(torch.arange(kp, device=pos.device), e)[:k]  # each input candidate's row
        return RolloutTrace(total[order], torch.stack(path, 2)[order], torch.stack(agent_dist, 2)[order],
                            torch.stack(shelf_gap, 2)[order])


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
    do not accelerate. Mean (E, B, P) for each of ``members`` identical members, zero variance; ``bumper`` as
    the floor's (``WarehouseFloor(bumper=...)``).
    """

    def __init__(self, layout: Layout, members: int = 1, neighbours: bool = True, bumper: bool = BUMPER) -> None:
        super().__init__()
        self.members, self.neighbours, self.bumper = members, neighbours, bumper
        self.register_buffer("rects", torch.tensor(layout.obstacles, dtype=torch.float32))

    def forward(self, obs: torch.Tensor, action: torch.Tensor, neighbour_actions: torch.Tensor | None = None) -> Prediction:
        phys = exact_step(obs, action, neighbour_actions if self.neighbours else None, self.rects, self.bumper)
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
               rects: torch.Tensor, bumper: bool = BUMPER) -> torch.Tensor:
    """Each robot's next physical state (..., P) by the floor's physics from obs (..., S), action (..., A)
    and the slots' actions (..., M, A) (None: the robot alone); ``bumper`` as the floor's."""
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
        if bumper:
            vel = torch.where((overlap > CONTACT_TOLERANCE).any(-2), 0.0, vel)
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
