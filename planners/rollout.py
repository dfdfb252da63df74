"""Batched rollouts of candidate action sequences through a dynamics ensemble.

All agents, candidates, particles and members advance together: one model call
per horizon step. Propagation modes follow PETS (Chua et al., 2018):

- ``ts1``: each particle follows one member for the whole horizon, sampling its Gaussian;
- ``tsinf``: particles are reassigned to random members at every step;
- ``expectation``: the members' mean prediction, no sampling (deterministic, differentiable).

A recurrent (GRU) ensemble rolls out the same way, each member from its part of each agent's hidden state.

Shapes: ``N`` agents, ``K`` candidates, ``H`` horizon, ``E`` members, ``P`` particles
(``p = P / E`` per member), ``S`` state, ``A`` action.
"""

from __future__ import annotations

from typing import Any

import torch

from planners.objectives import Objective, Params
from worldmodel.dynamics import EnsembleDynamics, FoldedDynamics
from worldmodel.nn import variance

_CHUNK_ROWS = 16384
"""Most rows (steps x particle rows) a sampled rollout keeps per objective call: its states stay in cache."""

HIDDEN = "hidden"
"""(N, E*Hd) recurrent hidden state per agent (every member's), in the planner's params when the dynamics is a GRU."""


def is_recurrent(dynamics: torch.nn.Module) -> bool:
    """Whether ``dynamics`` is recurrent (it has ``step``): each agent's hidden state is carried between calls."""
    return hasattr(dynamics, "step")


def make_rollout(dynamics: torch.nn.Module, objective: Objective, propagation: str, particles: int,
                 disagreement_penalty: float = 0.0) -> "Rollout | RecurrentRollout":
    """The rollout for ``dynamics``: recurrent models carry each agent's hidden state."""
    cls = RecurrentRollout if is_recurrent(dynamics) else Rollout
    return cls(dynamics, objective, propagation, particles, disagreement_penalty)


class Rollout:
    """Scores (N, K, H, A) action sequences from (N, S) states by simulated return.

    In the sampled modes the N*K*P particle rows are dealt to members round-robin
    (row r follows member r mod E), so each member evaluates only its own rows:
    a step costs N*K*P member evaluations, not E times that. With P = 1 each
    candidate follows one member; with P a multiple of E every candidate is
    simulated by every member (PETS' TS-1 and TS-inf).
    """

    def __init__(self, dynamics: torch.nn.Module, objective: Objective, propagation: str, particles: int,
                 disagreement_penalty: float = 0.0) -> None:
        self.dynamics, self.objective = dynamics, objective
        self.members, self.particles = dynamics.members, particles
        if propagation == "tsinf" and particles % self.members:
            raise ValueError(f"propagation 'tsinf' needs particles ({particles}) to be a multiple of the "
                             f"ensemble size ({self.members})")
        if propagation != "expectation" and disagreement_penalty and particles < 2:
            raise ValueError("a disagreement penalty with sampled propagation needs particles >= 2 "
                             "(or propagation 'expectation')")
        self.penalty = disagreement_penalty
        self.returns = self._expectation if propagation == "expectation" else self._sampled
        self.shuffle = propagation == "tsinf"

    def _disagreement(self, means: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Variance of predicted states along ``dim`` in units of the typical one-step change, mean over S."""
        return (variance(means, dim) / self.dynamics.delta_norm.std.square()).mean(-1)

    def _expectation(self, obs: torch.Tensor, actions: torch.Tensor, params: Params,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Returns (N, K) of the members' mean trajectory."""
        n, k, h, _ = actions.shape
        state = obs[:, None].expand(n, k, -1).reshape(n * k, -1)  # (N*K, S)
        total = obs.new_zeros(n, k)
        model, objective = _stepper(self.dynamics, params, n, k), self.objective.prepared()
        for t in range(h):
            action = actions[:, :, t].reshape(n * k, -1)
            means = model.mean(state, action)  # (E, N*K, S)
            nxt = means.mean(0)
            reward = objective(state.view(1, n, k, -1), action.view(1, n, k, -1), nxt.view(1, n, k, -1),
                                    params)[0]  # (N, K)
            if self.penalty:
                reward = reward - self.penalty * self._disagreement(means).view(n, k)
            total = total + reward
            state = nxt
        return total

    def _sampled(self, obs: torch.Tensor, actions: torch.Tensor, params: Params,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Returns (N, K): the mean return over P sampled futures per candidate (TS-1 / TS-inf)."""
        n, k, h, a = actions.shape
        e, p, s = self.members, self.particles, obs.shape[-1]
        rows = n * k * p
        # Rows are dealt round-robin to members and stay dealt for the whole horizon, so each step's
        # model call reads and writes (E, R, *) directly. A step's actions are one block, and the states
        # the native kernel writes are member-minor in memory ((R, E, S)), so reading them back in
        # (agent, candidate, particle) order is a view. Extra rows (repeats of the first ones, simulated
        # and then dropped) pad each member's share to a multiple of 16, which keeps torch's batched
        # matmuls on their fast aligned path (1.5x on AVX-512).
        pad = (-rows) % (e * 16)
        acts = actions[:, :, None].expand(n, k, p, h, a).reshape(rows, h, a)  # (M, H, A)
        dealt_acts = deal_rows(acts.transpose(0, 1), e, pad)  # (H, E, R, A), each step's actions one block
        first = deal_rows(obs[:, None].expand(n, k * p, s).reshape(rows, s), e, pad)  # (E, R, S)
        model, objective = _stepper(self.dynamics, params, n, k * p, pad), self.objective.prepared()
        noise = model.noise((h, *first.shape), generator, obs)  # (H, E, R, S), or H seeds
        differentiable = torch.is_grad_enabled() and (actions.requires_grad or obs.requires_grad)
        run = self._stepwise if differentiable else self._chunked
        total, spread = run(first, dealt_acts, noise, model, objective, params, (n, k, p), generator)
        return total - self.penalty * spread if self.penalty else total

    def _chunked(self, first: torch.Tensor, dealt_acts: torch.Tensor, noise: torch.Tensor | list[int], model: Any,
                 objective: Objective, params: Params, nkp: tuple[int, int, int],
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``_sampled`` without gradients: returns the (N, K) mean return and the disagreement's sum over
        the horizon (arguments as ``_stepwise``'s)."""
        (n, k, p), s, a, h = nkp, first.shape[-1], dealt_acts.shape[-1], len(dealt_acts)
        rows, padded = n * k * p, first.shape[0] * first.shape[1]
        # The steps write their states into a (C+1, R, E, S) buffer, and the objective scores C steps
        # in one call: its terms (and the reward model) run once per C steps rather than once per
        # step. C is as many steps as keep a chunk's states in cache (all H for a few agents, two at
        # 256); each chunk starts from the last state of the one before. TS-inf moves states between
        # steps, so its step inputs are a second buffer; otherwise step j reads what step j-1 wrote.
        chunk = max(1, min(h, _CHUNK_ROWS // padded))
        states = first.new_empty(chunk + 1, *first.transpose(0, 1).shape)
        states[0] = first.transpose(0, 1)
        inputs = states[:chunk] if not self.shuffle else states.new_empty(chunk, *states.shape[1:])
        if self.shuffle:
            inputs[0] = states[0]
        total, spread = first.new_zeros(n, k * p), first.new_zeros(n, k)  # spread: the penalty's sum over the horizon
        layout = lambda x, d: _rows(x, rows).view(len(x), n, k * p, d)  # noqa: E731  (C, N, K*P, D)
        for t0 in range(0, h, chunk):
            c = min(chunk, h - t0)
            if t0 and self.shuffle:  # this chunk starts from the previous one's last state
                self._carry(states[chunk], inputs[0], rows, n * k, generator)
            elif t0:
                states[0].copy_(states[chunk])
            for j in range(c):
                out = states[j + 1].transpose(0, 1)  # (E, R, S)
                mean, nxt = model.sample(inputs[j].transpose(0, 1), dealt_acts[t0 + j], noise[t0 + j],
                                         want_mean=bool(self.penalty), out=out)
                if nxt.data_ptr() != out.data_ptr():  # torch's path draws into a new tensor
                    out.copy_(nxt)
                if self.penalty:
                    spread += self._disagreement(collect_rows(mean, rows).view(n, k, p, s), dim=2)
                if self.shuffle and j + 1 < c:
                    self._carry(states[j + 1], inputs[j + 1], rows, n * k, generator)
            reward = objective(layout(inputs[:c], s), layout(dealt_acts[t0:t0 + c].transpose(1, 2), a),
                               layout(states[1:c + 1], s), params)  # (C, N, K*P)
            total += reward.sum(0)
        return total.view(n, k, p).mean(-1), spread

    def _stepwise(self, first: torch.Tensor, dealt_acts: torch.Tensor, noise: torch.Tensor | list[int], model: Any,
                  objective: Objective, params: Params, nkp: tuple[int, int, int],
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``_sampled`` for gradients through the rollout (gradient MPC): every step out of place and scored
        as it is taken, as autograd keeps each step's tensors for the backward pass. Returns the (N, K)
        mean return and the disagreement's sum over the horizon.

        Args: the first states dealt to members (E, R, S), each step's dealt actions (H, E, R, A), the
        steps' noise, the model's stepper, the prepared objective, its params, (N, K, P), the generator.
        """
        (n, k, p), e, s, a = nkp, self.members, first.shape[-1], dealt_acts.shape[-1]
        rows, pad = n * k * p, first.shape[0] * first.shape[1] - n * k * p
        state, total, spread = first, first.new_zeros(n, k * p), first.new_zeros(n, k)
        for t in range(len(dealt_acts)):
            mean, nxt = model.sample(state, dealt_acts[t], noise[t], want_mean=bool(self.penalty))
            reached = collect_rows(nxt, rows)
            total = total + objective(collect_rows(state, rows).view(1, n, k * p, s),
                                      collect_rows(dealt_acts[t], rows).view(1, n, k * p, a),
                                      reached.view(1, n, k * p, s), params)[0]
            if self.penalty:
                spread = spread + self._disagreement(collect_rows(mean, rows).view(n, k, p, s), dim=2)
            state = deal_rows(self._reassign(reached, n * k, generator), e, pad) if self.shuffle else nxt
        return total.view(n, k, p).mean(-1), spread

    def _carry(self, state: torch.Tensor, into: torch.Tensor, rows: int, candidates: int,
               generator: torch.Generator | None) -> None:
        """TS-inf: the next step's inputs, ``state`` (R, E, S) with each candidate's particles reassigned
        (padding rows keep their own states: simulated and dropped, they only need to be finite)."""
        into.copy_(state)  # the padding rows too
        into.view(-1, state.shape[-1])[:rows] = self._reassign(_rows(state, rows), candidates, generator)

    def _reassign(self, state: torch.Tensor, candidates: int, generator: torch.Generator | None) -> torch.Tensor:
        """TS-inf: shuffle each candidate's P particles, which moves them to other members. (M, S) -> (M, S)."""
        p, s = self.particles, state.shape[-1]
        order = torch.argsort(torch.rand(candidates, p, generator=generator, device=state.device), dim=1)
        return state.view(candidates, p, s).gather(1, order[..., None].expand(-1, -1, s)).view(-1, s)

    @torch.no_grad()
    def audit(self, obs: torch.Tensor, plan: torch.Tensor,
              params: Params | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen plans' mean trajectory (N, H+1, S) and ensemble disagreement along it (N, H)."""
        state, states, means, model = obs, [obs], [], _stepper(self.dynamics, params, len(obs))
        for t in range(plan.shape[1]):
            means.append(model.mean(state, plan[:, t]))  # (E, N, S)
            state = means[-1].mean(0)
            states.append(state)
        return torch.stack(states, 1), self._disagreement(torch.stack(means, 2))  # (E, N, H, S) -> (N, H)


class RecurrentRollout(Rollout):
    """``Rollout`` through a GRU ensemble (``worldmodel.recurrent``), each member carrying its own hidden state.

    Every row starts from its agent's hidden state ``params[HIDDEN]`` (N, E*Hd) (zeros when absent: a
    fresh episode), member e's part for the rows member e simulates. 'expectation' steps every member
    from the members' mean state; the sampled modes deal particle rows to members as ``Rollout`` does,
    each member following its own states (E, R, S) and hidden (E, R, Hd). The disagreement (audit,
    penalty) is ``Rollout``'s: member variance in units of the typical one-step change. 'tsinf' is
    'ts1' here: a member's hidden state summarises that member's own trajectory, so particles stay
    with their member.
    """

    def __init__(self, dynamics: torch.nn.Module, objective: Objective, propagation: str, particles: int,
                 disagreement_penalty: float = 0.0) -> None:
        propagation = "ts1" if propagation == "tsinf" else propagation
        super().__init__(dynamics, objective, propagation, particles, disagreement_penalty)


class _RecurrentStepper:
    """A GRU ensemble behind ``FoldedDynamics``' calls, carrying each member's hidden state (E, R, Hd) from
    step to step: R rows, row r starting from agent ``agents[r]``'s (or ``agents[e, r]``'s) state."""

    def __init__(self, dynamics: torch.nn.Module, hidden: torch.Tensor, agents: torch.Tensor) -> None:
        own = dynamics.split(hidden)  # (E, N, Hd)
        rows = agents.expand(own.shape[0], -1)  # (E, R)
        self.dynamics, self.h = dynamics, own.gather(1, rows[..., None].expand(-1, -1, own.shape[-1]))

    def mean(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Each member's next state: obs (R, S) shared or (E, R, S) -> (E, R, S)."""
        self.h, pred = self.dynamics.step_members(self.h, obs, action)
        return pred.mean

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None,
              like: torch.Tensor) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)

    def sample(self, obs: torch.Tensor, action: torch.Tensor, noise: torch.Tensor, want_mean: bool = True,
               out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self.h, pred = self.dynamics.step_members(self.h, obs, action)
        return pred.mean, pred.sample(noise)


def _stepper(dynamics: torch.nn.Module, params: Params | None = None, n: int = 0, per_agent: int = 1,
             pad: int | None = None) -> "FoldedDynamics | _RecurrentStepper | _Unfolded":
    """What a horizon loop steps: an ``EnsembleDynamics``' folded inference form; a recurrent ensemble with
    each row starting from its agent's hidden state ``params[HIDDEN]`` (zeros when absent), the rows being
    ``per_agent`` consecutive ones for each of the N agents, shared by the members (``pad`` None) or dealt
    to them with ``pad`` extra rows (``deal_rows``); other models as they are."""
    if isinstance(dynamics, EnsembleDynamics):
        return dynamics.folded()
    if not is_recurrent(dynamics):
        return _Unfolded(dynamics)
    hidden = (params or {}).get(HIDDEN)
    hidden = dynamics.initial_state(n) if hidden is None else hidden  # (N, E*Hd)
    agents = torch.arange(n, device=hidden.device).repeat_interleave(per_agent)  # (M,) each row's agent
    if pad is not None:
        agents = deal_rows(agents[:, None], dynamics.members, pad)[..., 0]  # (E, R)
    return _RecurrentStepper(dynamics, hidden, agents)


class _Unfolded:
    """Any dynamics module returning a ``Prediction``, behind ``FoldedDynamics``' two calls. One that says it is
    not ``probabilistic`` (a latent model's) draws its mean: no noise is made for it."""

    def __init__(self, dynamics: torch.nn.Module) -> None:
        self.dynamics = dynamics
        self.deterministic = not getattr(dynamics, "probabilistic", True)

    def mean(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.dynamics(obs, action).mean

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None,
              like: torch.Tensor) -> torch.Tensor | list[int]:
        if self.deterministic:  # one placeholder per step: (H, E, R, S) of draws would be multiplied by zero
            return [0] * shape[0]
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)

    def sample(self, obs: torch.Tensor, action: torch.Tensor, noise: torch.Tensor | int, want_mean: bool = True,
               out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self.dynamics(obs, action)
        return pred.mean, pred.mean if self.deterministic else pred.sample(noise)  # type: ignore[arg-type]


def deal_rows(x: torch.Tensor, members: int, pad: int) -> torch.Tensor:
    """Rows dealt round-robin to members: (..., M, D) -> (..., E, (M + pad)/E, D), member e holding rows
    e, e+E, ..., as a view of one contiguous copy.

    ``pad`` rows (repeats of the first ones) make M + pad a multiple of E; ``collect_rows`` drops them.
    """
    if pad:
        repeats = x[..., :pad, :] if pad <= x.shape[-2] else x[..., torch.arange(pad, device=x.device) % x.shape[-2], :]
        x = torch.cat([x, repeats], -2)
    x = x.contiguous()
    return x.view(*x.shape[:-2], -1, members, x.shape[-1]).transpose(-3, -2)


def _rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """Dealt rows back in their own order: (..., R, E, D) in memory -> (..., M, D), a view when it can be."""
    return x.reshape(*x.shape[:-3], -1, x.shape[-1])[..., :rows, :]


def collect_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """Inverse of ``deal_rows``: (E, ceil(M/E), D) -> (M, D)."""
    return x.transpose(0, 1).reshape(-1, x.shape[-1])[:rows]
