"""A policy as the planner's prior (TD-MPC2): its rollouts through the model join the candidates.

One batched closed-loop rollout of the policy for all N agents over H steps gives each agent one
sequence; a planner replaces ``PlanConfig.prior_samples`` (M) of its K candidates with copies of it,
all but one with a little noise, every round. Where the policy is good, the planner starts from its
sequence instead of from noise, so fewer samples or rounds find a good plan. The prior's rollout steps
each agent through one member (dealt round-robin, as the candidates' are): it only proposes a sequence,
which the candidates' rollouts then score, so it need not pay for every member.

Shapes: ``N`` agents, ``M`` prior candidates, ``K`` candidates, ``H`` horizon, ``S`` state, ``A`` action.
"""

from __future__ import annotations

from typing import Callable

import torch

from planners.config import PlanConfig
from planners.objectives import ActionPolicy, Params
from planners.rollout import HIDDEN, collect_rows, deal_rows, is_recurrent
from worldmodel.dynamics import EnsembleDynamics

State = dict
"""A planner's search state within one call (``planners.base.State``; this module loads before it)."""

_SEQUENCE = "prior"
"""Key of the policy's (N, H, A) sequence in a planner's search state: rolled out once per call."""


@torch.no_grad()
def policy_rollout(dynamics: torch.nn.Module, policy: ActionPolicy, obs: torch.Tensor, params: Params,
                   horizon: int, project: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   one_member: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy acting in the model: each step's action from the members' mean predicted state.

    Args:
        dynamics: an ensemble or a recurrent ensemble (its members' mean, each member from its part of
            ``params[HIDDEN]``).
        obs: (N, S) start states; params: the agents' objective parameters (N first), passed to the policy.
        project: applied to each step's (N, A) actions before they act (the agents' action bounds).
        one_member: each agent through one member of an ensemble (agent i through member i mod E) instead
            of the members' mean: E times fewer evaluations (recurrent ensembles always take the mean).

    Returns:
        (actions (N, H, A), states (N, H+1, S) starting at obs).
    """
    step = _member_step(dynamics, len(obs)) if one_member and not is_recurrent(dynamics) \
        else _mean_step(dynamics, obs, params)
    state, states, actions = obs, [obs], []
    for _ in range(horizon):
        action = policy(state, params)  # (N, A)
        if project is not None:
            action = project(action.clone())
        state = step(state, action)  # (N, S)
        actions.append(action)
        states.append(state)
    return torch.stack(actions, 1), torch.stack(states, 1)


def _mean_step(dynamics: torch.nn.Module, obs: torch.Tensor,
               params: Params) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One members'-mean step (N, S), (N, A) -> (N, S); a recurrent model carries every member's hidden state
    along, each member stepping from the shared mean state."""
    if is_recurrent(dynamics):
        hidden = [params.get(HIDDEN, dynamics.initial_state(len(obs)))]  # (N, E*Hd)

        def recurrent(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
            hidden[0], pred = dynamics.step(hidden[0], state, action)
            return pred.mean.mean(0)
        return recurrent
    if isinstance(dynamics, EnsembleDynamics):
        folded = dynamics.folded()
        return lambda state, action: folded.mean(state, action).mean(0)
    return lambda state, action: dynamics(state, action).mean.mean(0)


def _member_step(dynamics: torch.nn.Module, n: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One step of each of N agents through its own member (round-robin): (N, S), (N, A) -> (N, S)."""
    members, pad = dynamics.members, -n % dynamics.members
    mean = dynamics.folded().mean if isinstance(dynamics, EnsembleDynamics) else \
        (lambda state, action: dynamics(state, action).mean)  # (E, R, S), (E, R, A) -> (E, R, S)

    def step(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return collect_rows(mean(deal_rows(state, members, pad), deal_rows(action, members, pad)), n)
    return step


def make_prior(policy: ActionPolicy | None, dynamics: torch.nn.Module, cfg: PlanConfig, low: torch.Tensor,
               high: torch.Tensor) -> "PolicyPrior | None":
    """The prior a planner uses: None without a policy or when ``cfg.prior_samples`` is 0."""
    if policy is None or cfg.prior_samples == 0:
        return None
    return PolicyPrior(policy, dynamics, cfg, low, high)


class PolicyPrior:
    """Supplies the last M of a planner's K candidates each round: the policy's sequence plus noise.

    Args:
        policy: the prior's policy; dynamics: the planner's model.
        cfg: ``prior_samples`` (M) and ``prior_noise``; low, high: (A,) the action box.
    """

    def __init__(self, policy: ActionPolicy, dynamics: torch.nn.Module, cfg: PlanConfig, low: torch.Tensor,
                 high: torch.Tensor) -> None:
        self.policy, self.dynamics, self.horizon = policy, dynamics, cfg.horizon
        self.count = cfg.prior_samples
        self.std = cfg.prior_noise * (high - low) / 2  # (A,)

    def sequence(self, obs: torch.Tensor, params: Params, state: State) -> torch.Tensor:
        """The policy's (N, H, A) sequence for this call, rolled out on first use and kept in ``state``."""
        if _SEQUENCE not in state:
            state[_SEQUENCE] = policy_rollout(self.dynamics, self.policy, obs, params, self.horizon,
                                              one_member=True)[0]
        return state[_SEQUENCE]

    def fill(self, candidates: torch.Tensor, obs: torch.Tensor, params: Params, state: State,
             generator: torch.Generator) -> torch.Tensor:
        """Overwrite the last M of ``candidates`` (N, K, H, A) (at most K - 1) in place with the prior's; returns them.

        The first of the M is the policy's sequence itself, the others carry white noise of
        ``prior_noise``; the caller projects the candidates into the bounds afterwards.
        """
        seq = self.sequence(obs, params, state)  # (N, H, A)
        n, k, h, a = candidates.shape
        m = min(self.count, k - 1)  # a shrunk round (``CEMPlanner``'s ``shrink``) keeps its first, the current mean
        noise = torch.randn((n, m, h, a), generator=generator, device=candidates.device)
        noise[:, 0] = 0  # the policy's own sequence competes as it is
        candidates[:, k - m:] = torch.addcmul(seq[:, None], self.std, noise)
        return candidates
