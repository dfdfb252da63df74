"""Why an agent's action: the chosen plan beside its counterfactuals, each as the model predicts it.

``explain`` plans once for one agent with the served settings, then rolls out together the chosen
plan, the best ``alternatives`` of the planner's last round, the fallback's sequence (its policy's closed
loop; for a planner that holds plans, the warm start a late call would act on, while a fallback for another
reason acts with zero) and any proposals, and reports for each its predicted trajectory, return,
disagreement, worst margin per constraint kind and whether the shield would pass it.

Shapes: ``S`` state, ``A`` action, ``H`` horizon, ``E`` members, ``R`` sequences explained, ``M``
proposals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from planners.base import BasePlanner, Decision, Fallback
from planners.constraints import KINDS, Constraint, kind_margins
from planners.objectives import Params
from planners.prior import policy_rollout
from planners.shield import Shield

SOURCES = ("chosen", "alternative", "fallback", "proposal")
"""Where an explained sequence comes from: ``Option.source``."""


@dataclass(frozen=True)
class Option:
    """One action sequence and what the model predicts for it.

    Attributes:
        source: 'chosen', 'alternative', 'fallback' or 'proposal'.
        actions: (H, A) the sequence (a proposed single action is held for H steps).
        trajectory: (H+1, S) the members' mean predicted states, starting at the observation.
        expected_return: the objective summed along ``trajectory``.
        disagreement: (H,) ensemble disagreement along it (``PlanResult.disagreement``'s units).
        margins: worst predicted margin per constraint kind ('no_fly_zone', 'state_box', 'speed') over
            every member and the H steps; None where the request has no such constraint.
        shield_passes: the shield would let its first action through (its worst member keeps every margin
            at least the clearance over the shield's horizon, or H when that is shorter); None when the
            planner has no shield.
    """

    source: str
    actions: np.ndarray
    trajectory: np.ndarray
    expected_return: float
    disagreement: np.ndarray
    margins: dict[str, float | None]
    shield_passes: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "actions": self.actions.tolist(), "trajectory": self.trajectory.tolist(),
                "expected_return": _finite(self.expected_return), "disagreement": self.disagreement.tolist(),
                "margins": dict(self.margins), "shield_passes": self.shield_passes}


@dataclass(frozen=True)
class Explanation:
    """One agent's decision and its counterfactuals.

    Attributes:
        action: (A,) what the served settings answer now (after fallback and shield).
        decision: 'planned', 'fallback', 'shielded' or 'policy'.
        fallback_reason: 'deadline', 'uncertainty', 'error', or None when the plan acted.
        fallback_action_by: 'policy', 'zero', 'brake' or 'plan': who the fallback is (whether or not it acted).
        shielded_constraint: what the shield kept the action from violating, or None.
        margin: worst predicted margin of the answered action over the shield's horizon (None: none given).
        chosen: the plan the planner chose; alternatives: the best others of its last round, best first;
        fallback: the fallback's sequence; proposals: the caller's, in order.
    """

    action: np.ndarray
    decision: str
    fallback_reason: str | None
    fallback_action_by: str
    shielded_constraint: str | None
    margin: float | None
    chosen: Option
    alternatives: tuple[Option, ...]
    fallback: Option
    proposals: tuple[Option, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: lists for arrays, None for infinite or NaN numbers."""
        return {"action": self.action.tolist(), "decision": self.decision, "fallback_reason": self.fallback_reason,
                "fallback_action_by": self.fallback_action_by, "shielded_constraint": self.shielded_constraint,
                "margin": self.margin, "chosen": self.chosen.to_dict(),
                "alternatives": [o.to_dict() for o in self.alternatives], "fallback": self.fallback.to_dict(),
                "proposals": [o.to_dict() for o in self.proposals]}


@torch.no_grad()
def explain(planner: BasePlanner, obs: torch.Tensor, params: Params, warm_start: torch.Tensor | None = None,
            proposals: torch.Tensor | None = None, alternatives: int = 3) -> Explanation:
    """Plan for one agent and explain the decision.

    Args:
        planner: the served planner (its settings, fallback and shield).
        obs: (1, S); params: that agent's (N = 1 first); warm_start: (1, H, A) or None.
        proposals: (M, A) actions, each held for H steps, or (M, H, A) sequences; None for none.
        alternatives: how many of the last round's best other candidates to show.
    """
    result = planner.plan(obs, params, warm_start=warm_start)
    h = planner.cfg.horizon
    others = _others(planner, result.plan[0], alternatives)  # (a, H, A)
    if planner.hold_plan and warm_start is not None and bool(torch.isfinite(warm_start).all()):
        fallback = planner.held_plans(warm_start, params)[0]  # (H, A): what a late call would act on
    else:
        fallback = policy_rollout(planner.rollout.dynamics, planner.fallback_policy, obs, params, h,
                                  lambda a: planner._project(a, params))[0][0]  # (H, A)
    offered = _proposals(proposals, h, planner.act_dim, obs)  # (M, H, A)
    seqs = torch.cat([result.plan, others, fallback[None], offered])  # (R, H, A)
    options = _options(planner, obs, params, seqs)
    sources = ["chosen"] + ["alternative"] * len(others) + ["fallback"] + ["proposal"] * len(offered)
    built = [Option(source, **o) for source, o in zip(sources, options)]
    margin = float(result.margin[0])
    return Explanation(
        action=result.actions[0].cpu().numpy(), decision=Decision(int(result.decision[0])).label,
        fallback_reason=Fallback(int(result.fallback_reason[0])).reason, fallback_action_by=planner.fallback_source,
        shielded_constraint=Constraint(int(result.shield[0])).reason, margin=_finite(margin),
        chosen=built[0], alternatives=tuple(built[1:1 + len(others)]), fallback=built[1 + len(others)],
        proposals=tuple(built[2 + len(others):]))


def _others(planner: BasePlanner, chosen: torch.Tensor, count: int) -> torch.Tensor:
    """The last round's best ``count`` candidates other than ``chosen`` (H, A): (a, H, A), a <= count."""
    top = planner.top_candidates(count + 1)
    if top is None or count < 1:
        return chosen.new_zeros(0, *chosen.shape)
    candidates = top[0][0]  # (c, H, A), best first
    same = (candidates - chosen).abs().flatten(1).amax(1) <= 1e-6
    return candidates[~same][:count]


def _proposals(proposals: torch.Tensor | None, h: int, a: int, like: torch.Tensor) -> torch.Tensor:
    """Proposals as (M, H, A) sequences: an (M, A) action held for H steps, an (M, H, A) one as it is."""
    if proposals is None:
        return like.new_zeros(0, h, a)
    p = torch.as_tensor(proposals, dtype=like.dtype, device=like.device)
    if p.dim() == 2 and p.shape[1] == a:
        return p[:, None].expand(-1, h, -1).clone()
    if p.dim() == 3 and p.shape[1:] == (h, a):
        return p
    raise ValueError(f"proposals must be (M, A) actions or (M, H, A) sequences with H = {h}, A = {a}, "
                     f"got {tuple(p.shape)}")


def _options(planner: BasePlanner, obs: torch.Tensor, params: Params, seqs: torch.Tensor) -> list[dict[str, Any]]:
    """Each of the R sequences (R, H, A) from ``obs`` (1, S): ``Option``'s fields but its source."""
    r = len(seqs)
    rows = {k: v.expand(r, *v.shape[1:]) for k, v in params.items()}  # the agent's params, once per sequence
    start = obs.expand(r, -1)
    trajectory, disagreement = planner.rollout.audit(start, seqs, rows)  # (R, H+1, S), (R, H)
    lead = lambda x: x[None]  # noqa: E731  (1, R, H, D): the objective's (X, N, R, D) layout
    returns = planner.rollout.objective(lead(trajectory[:, :-1]), lead(seqs), lead(trajectory[:, 1:]),
                                        rows)[0].sum(-1)  # (R,)
    per_kind = _kind_margins(planner, obs, params, seqs)  # (R, H, 3), worst member
    kinds = per_kind.amin(1)  # (R, 3)
    passes: list[bool | None] = [None] * r
    if planner.shield is not None:
        early = per_kind[:, :planner.shield.horizon].flatten(1).amin(1)  # (R,)
        passes = (early >= planner.shield.cfg.clearance).tolist()
    cpu = lambda x: x.detach().cpu().numpy()  # noqa: E731
    return [{"actions": cpu(seqs[i]), "trajectory": cpu(trajectory[i]), "expected_return": float(returns[i]),
             "disagreement": cpu(disagreement[i]), "shield_passes": passes[i],
             "margins": {kind.reason: _finite(float(kinds[i, j])) for j, kind in enumerate(KINDS)}}
            for i in range(r)]


def _kind_margins(planner: BasePlanner, obs: torch.Tensor, params: Params, seqs: torch.Tensor) -> torch.Tensor:
    """(R, H, 3) each step's margin per constraint kind, the worst member's: every member follows its own
    states (the shield's check; a recurrent ensemble's members from their parts of ``params[HIDDEN]``)."""
    shield = planner.shield or Shield(planner.rollout.dynamics)
    states, dims = shield.check(obs, seqs[None], params)[0], (shield.pos_dims, shield.vel_dims)  # (E, 1, R, H, S)
    e, _, r, h, s = states.shape
    margins = kind_margins(states.reshape(e, 1, r * h, s), params, *dims)  # (E, 1, R*H, 3)
    return margins.amin(0).view(r, h, len(KINDS))


def _finite(x: float) -> float | None:
    """``x``, or None where it is infinite or NaN (JSON has neither)."""
    return x if math.isfinite(x) else None
