"""The fleet shield: predicted robot-robot, robot-human and shelf contacts are violated constraints.

Each tick the fleet's chosen joint plan is rolled out for ``horizon`` steps through EVERY member of the
fleet model, each member following its own mean. No sampling noise: the members' spread is the model's
doubt about the dynamics, while the noise it predicts is mostly actuator jitter (1 cm/s per step), and
a check that draws noise could pass a plan on one tick and fail the same plan on the next. A robot is
flagged when any member predicts it, at any step, within two radii (plus ``agent_clearance``) of another
agent (``AGENT_CONTACT``) or within one radius (plus ``shelf_clearance``) of a shelf or wall (``SHELF``),
for the constraints the config names.

Flagged robots get alternatives (``ALTERNATIVES``): brake, brake and turn left, brake and turn right,
and slide off the nearest shelf along its face. Alternative j switches every flagged robot at once
while the others keep their plans; all J alternatives times E members are one batched rollout. Each
flagged robot then takes, of the alternatives no member predicts in contact of a flagging kind, the one
with the fewest predicted contacts of any kind, then the highest predicted return (the planner's own
costs: the one that gives up least progress). When none is clear it takes the fewest flagging contact
steps, then the widest worst gap, its own plan among the candidates, so the shield never makes a
robot's prediction worse by its own measure. Further ``rounds`` do the same for robots the switches put
in predicted contact.

Shapes: ``N`` robots, ``H`` the plan's horizon, ``Hs`` the shield's, ``J`` alternatives, ``E``
members, ``A`` action.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from planners.constraints import Constraint
from planners.fleet_rollout import FleetDynamics, FleetRollout, FloorState
from planners.warehouse_costs import WarehouseCosts
from worldmodel.envs.warehouse import ACCEL, DT, ROBOT_RADIUS, SHELF_DIMS, VEL_DIMS

NONE, AGENT_CONTACT, SHELF = int(Constraint.NONE), int(Constraint.AGENT_CONTACT), int(Constraint.SHELF)
"""``ShieldedActions.constraint`` codes, the shared ``planners.constraints.Constraint``'s: not shielded, a predicted
contact with a robot or a human, with a shelf or wall. A robot predicted to touch both counts as an agent contact."""
CONSTRAINTS = {code: Constraint(code).reason for code in (AGENT_CONTACT, SHELF)}
"""The fleet codes' names, as the API spells them: 'agent_contact', 'shelf'."""
ALTERNATIVES = ("plan", "brake", "brake_left", "brake_right", "slide")
"""``ShieldedActions.choice`` names, indexed by choice: 0 is the robot's own plan."""
_MOVING = 0.05
"""m/s below which a robot's heading is its plan's first action rather than its velocity."""


@dataclass(frozen=True)
class FleetShieldConfig:
    """The fleet shield's settings. The defaults flag shelf and wall contacts only.

    Measured with the coordinated planner (H 10, K 20) through the trained 50-robot fleet model, 50
    robots, 600 ticks, floor seeds 0-7, one torch thread, on floors without the bumper and each robot scored
    in the joint samples; sums over the 8 seeds (per-seed collisions
    range from 12 to 132, so single seeds say little):

    | shield | robot contacts (per robot-hour) | shelf contacts | deliveries per hour (mean) |
    |---|---|---|---|
    | none | 476 (71.4) | 20 | 3,308 |
    | these defaults: shelf flags | 710 (106.5) | 0 | 3,338 |
    | agent and shelf flags, rounds 2 | 420 (63.0) | 8 | 3,068 |
    | agent and shelf flags, both clearances 0, rounds 2 | 398 (59.7) | 8 | 3,158 |

    Only shelf flags reach zero shelf contacts without fewer deliveries (2 to 44 robot-ticks shielded a run);
    robot contacts were higher in 7 of the 8 seeds, though in seed 2 the six robots with the most contacts
    were never shielded (runs diverge after the first change). Flagging agent contacts too brakes robots
    in traffic (35 to 330 robot-ticks a run), which costs deliveries, and leaves shelf contacts that a
    neighbour's push causes. One check, on the shared 2-core machine under load, beside the planner's
    call in the same runs: 50 robots 5.7-11.2 ms when nothing is flagged, 19-28 ms with alternatives to roll
    out (planner 22-24 ms); 200 robots 12-23 ms and 57-103 ms (planner 76-125 ms)."""

    horizon: int = 5
    """Hs, steps checked ahead (0.5 s)."""
    agent_clearance: float = 0.01
    """Metres beyond touching (two radii) that count as a predicted contact between agents: the exact
    physics leaves touching discs at exactly two radii, so a contact shows as a gap of zero."""
    shelf_clearance: float = 0.05
    """Metres beyond touching (one radius) that count as a predicted contact with a shelf or wall (a robot
    against one sits at exactly one radius)."""
    turn: float = 1.0
    """Sideways action of the turning alternatives, on top of braking (the box clips the sum)."""
    rounds: int = 1
    """Rounds of alternatives: after the first, robots that the switched robots' new actions put in predicted
    contact (their own plans clear before) get alternatives too, the others' choices held."""
    constraints: tuple[int, ...] = (SHELF,)
    """The constraints that flag a robot (codes); its alternatives are ranked by every contact regardless."""

    def __post_init__(self) -> None:
        if not isinstance(self.horizon, int) or self.horizon < 1:
            raise ValueError(f"horizon must be an integer >= 1, got {self.horizon!r}")
        for name in ("agent_clearance", "shelf_clearance"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 metres, got {getattr(self, name)}")
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"rounds must be an integer >= 1, got {self.rounds!r}")
        if not 0 <= self.turn <= 1:
            raise ValueError(f"turn must be in [0, 1], got {self.turn}")
        if not self.constraints or not set(self.constraints) <= {AGENT_CONTACT, SHELF}:
            raise ValueError(f"constraints must be one or both of {AGENT_CONTACT} ({CONSTRAINTS[AGENT_CONTACT]}) and "
                             f"{SHELF} ({CONSTRAINTS[SHELF]}), got {self.constraints!r}")


@dataclass(frozen=True)
class ShieldedActions:
    """The shield's answer for one tick."""

    actions: torch.Tensor
    """(N, A) the actions to take."""
    constraint: torch.Tensor
    """(N,) long: the constraint each robot's plan was predicted to violate (``NONE``, ``AGENT_CONTACT``,
    ``SHELF``); nonzero rows took ``choice``'s first action."""
    choice: torch.Tensor
    """(N,) long: the alternative taken (``ALTERNATIVES``): 0, the plan, for every robot not shielded and for a
    shielded one whose every alternative was predicted worse."""

    def counts(self) -> dict[int, int]:
        """Robots shielded per constraint code (``CONSTRAINTS``' keys)."""
        return {code: int((self.constraint == code).sum()) for code in CONSTRAINTS}


@dataclass(frozen=True)
class _Verdict:
    """Per option and robot, over every member and step."""

    agent: torch.Tensor
    """(J, N) long: member-steps in contact with another agent."""
    shelf: torch.Tensor
    """(J, N) long: member-steps in contact with a shelf or wall."""
    gap: torch.Tensor
    """(J, N) the worst gap beyond touching (metres; negative: overlap; -inf for a diverging model)."""
    returns: torch.Tensor
    """(J, N) the members' mean predicted return."""


class FleetShield:
    """Checks a fleet's joint plan against predicted contacts and replaces the first action of flagged robots.

    Args:
        dynamics: the fleet model (``FleetEnsemble`` or ``ExactFleetModel``); every member is checked.
        costs: the floor's costs, which rank the clear alternatives.
        cfg: the settings.
    """

    def __init__(self, dynamics: FleetDynamics, costs: WarehouseCosts,
                 cfg: FleetShieldConfig = FleetShieldConfig()) -> None:
        self.rollout, self.cfg, self.members = FleetRollout(dynamics, costs), cfg, int(dynamics.members)

    @torch.no_grad()
    def check(self, state: FloorState, plan: torch.Tensor) -> ShieldedActions:
        """The actions to take now: each robot's plan, or an alternative where the plan is predicted to touch.

        Args:
            state: the floor now (N robots).
            plan: (N, H, A) every robot's plan, H >= the shield's horizon.
        """
        n, hs = state.obs.shape[0], self.cfg.horizon
        if plan.dim() != 3 or plan.shape[0] != n or plan.shape[1] < hs:
            raise ValueError(f"plan must be (N, H, A) with N = {n} robots and H >= the shield's horizon {hs}, "
                             f"got {tuple(plan.shape)}")
        plan = plan[:, :hs].to(state.obs.device)  # (N, Hs, A)
        alternatives = self.alternatives(state, plan).transpose(0, 1)  # (J, N, Hs, A)
        rows = torch.arange(n, device=plan.device)
        # Roll the plan through every member: which robots does any member see touching?
        now = self._verdict(state, plan[None])
        constraint = _codes(now, self.cfg.constraints)  # (N,)
        todo, choice = constraint != NONE, torch.zeros_like(constraint)
        for round_ in range(self.cfg.rounds):  # each round decides for the whole floor at once
            if not bool(todo.any()):
                break
            # Every robot to decide switched to alternative j at once, the others as they are: (J, N, Hs, A).
            options = torch.where(todo[None, :, None, None], alternatives, plan[None])
            verdict = _cat(now, self._verdict(state, options))  # (1 + J, N): option 0 keeps what the robot has
            pick = torch.where(todo, _pick(verdict, self.cfg.constraints), 0)  # (N,)
            plan = torch.cat([plan[None], options])[pick, rows]  # (N, Hs, A)
            choice = torch.where(pick > 0, pick, choice)
            if round_ + 1 < self.cfg.rounds:  # robots the switches put in contact decide in the next round
                now = self._verdict(state, plan[None])
                todo = (_codes(now, self.cfg.constraints) != NONE) & (constraint == NONE)
                constraint = torch.where(todo, _codes(now, self.cfg.constraints), constraint)
        return ShieldedActions(plan[:, 0].clone(), constraint, choice)

    def alternatives(self, state: FloorState, plan: torch.Tensor) -> torch.Tensor:
        """(N, J, Hs, A) each robot's alternatives to its plan (N, Hs, A), ``ALTERNATIVES[1:]`` in order.

        Open loop from the state now: braking follows the speed full braking would leave (it never
        reverses a robot), the turns add a sideways push to the braking (left and right of the robot's
        heading: its velocity, or its plan's first action when nearly still), and the slide keeps the plan
        along the nearest shelf's face while pushing away from it at full action.
        """
        obs, hs = state.obs, plan.shape[1]
        vel = obs[:, VEL_DIMS]  # (N, 2)
        speed = vel.norm(dim=-1, keepdim=True)  # (N, 1)
        steps = torch.arange(hs, device=obs.device, dtype=obs.dtype)  # (Hs,)
        remaining = (speed - ACCEL * DT * steps).clamp_min(0)  # (N, Hs) the speed at each step's start
        unit = vel / speed.clamp_min(1e-9)
        brake = -unit[:, None] * (remaining / (ACCEL * DT)).clamp(max=1)[..., None]  # (N, Hs, A)
        first = plan[:, 0]
        heading = torch.where(speed > _MOVING, unit, first / first.norm(dim=-1, keepdim=True).clamp_min(1e-9))
        left = torch.stack([-heading[:, 1], heading[:, 0]], -1)[:, None] * self.cfg.turn  # (N, 1, A)
        to_shelf = obs[:, SHELF_DIMS]
        normal = (to_shelf / to_shelf.norm(dim=-1, keepdim=True).clamp_min(1e-9))[:, None]  # (N, 1, A) towards it
        slide = plan - ((plan * normal).sum(-1, keepdim=True) + 1) * normal  # normal part -1: away at full action
        return torch.stack([brake, brake + left, brake - left, slide], 1).clamp(-1.0, 1.0)

    def _verdict(self, state: FloorState, options: torch.Tensor) -> _Verdict:
        """Roll joint options (J, N, Hs, A) through every member's mean, in one call."""
        j, e = options.shape[0], self.members
        # Option j's copy for member m is candidate j*E + m, which the rollout deals to member m.
        trace = self.rollout.trace(state, options.repeat_interleave(e, 0), sample=False)
        agent_gap = trace.agent_dist.unflatten(0, (j, e)) - 2 * ROBOT_RADIUS  # (J, E, N, Hs)
        shelf_gap = trace.shelf_gap.unflatten(0, (j, e)) - ROBOT_RADIUS
        # NaN (a diverging model) counts as contact.
        agent, shelf = ~(agent_gap >= self.cfg.agent_clearance), ~(shelf_gap >= self.cfg.shelf_clearance)
        gap = torch.nan_to_num(torch.minimum(agent_gap, shelf_gap), nan=-torch.inf).amin(3).amin(1)  # (J, N)
        returns = torch.nan_to_num(trace.returns.unflatten(0, (j, e)).mean(1), nan=-torch.inf)
        return _Verdict(agent.sum((1, 3)), shelf.sum((1, 3)), gap, returns)


def _codes(v: _Verdict, constraints: tuple[int, ...]) -> torch.Tensor:
    """(N,) long: the constraint among ``constraints`` the first option's verdict violates, agent contact first."""
    agent, shelf = (v.agent[0] > 0) & (AGENT_CONTACT in constraints), (v.shelf[0] > 0) & (SHELF in constraints)
    return torch.where(agent, AGENT_CONTACT, torch.where(shelf, SHELF, NONE))


def _cat(a: _Verdict, b: _Verdict) -> _Verdict:
    return _Verdict(*(torch.cat([getattr(a, f.name), getattr(b, f.name)]) for f in fields(_Verdict)))


def _pick(v: _Verdict, constraints: tuple[int, ...]) -> torch.Tensor:
    """(N,) each robot's option. Of those clear of the flagging ``constraints``: the fewest contacts of any kind,
    then the highest return; when none is clear, the fewest flagging contacts, then the widest gap."""
    checked = v.agent * (AGENT_CONTACT in constraints) + v.shelf * (SHELF in constraints)  # (J, N)
    every = v.agent + v.shelf
    clear = checked == 0
    fewest = clear & (every == torch.where(clear, every, every.max() + 1).amin(0, keepdim=True))
    lowest = torch.finfo(v.returns.dtype).min  # a clear option with no finite return still beats an unclear one
    best_clear = torch.where(fewest, v.returns.clamp_min(lowest), -torch.inf).argmax(0)
    least = checked == checked.amin(0, keepdim=True)
    least_bad = torch.where(least, v.gap, -torch.inf).argmax(0)
    return torch.where(clear.any(0), best_clear, least_bad)
