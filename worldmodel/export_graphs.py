"""The graphs ``worldmodel.export`` writes: each network of a world model as a module of plain tensors.

Each ``Graph`` names its inputs and outputs, says which of their axes is the batch, draws random inputs
at the scale of the data the network was fitted on (its normalisers' statistics), and computes the
reference outputs the exported file must reproduce, through the torch model's own forward. The
dynamics and reward graphs are the planners' inference forms (normalisers folded into the weights).

Shapes: ``E`` dynamics members, ``Er`` reward members, ``B`` batch, ``S`` state, ``A`` action,
``F`` policy features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from worldmodel.dynamics import EnsembleDynamics
from worldmodel.nn import FoldedMLP, Normalizer
from worldmodel.reward import RewardModel, TerminationModel


@dataclass(frozen=True)
class Graph:
    """One network to export.

    Attributes:
        name: the file stem ("dynamics", "reward", "termination", "policy").
        module: takes ``inputs`` positionally, returns a tuple of ``outputs``.
        inputs: input names, in order.
        outputs: output names, in order.
        shapes: every input's and output's shape, "B" the batch axis (dynamic in the file), ints fixed.
        sample: draws random inputs with B rows: (B, generator) -> tuple of tensors.
        original: the torch model's own computation of ``outputs``, which the file must reproduce.
    """

    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    shapes: dict[str, list[int | str]]
    sample: Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]
    original: Callable[..., tuple[torch.Tensor, ...]]

    def reference(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The torch model's own outputs for ``inputs`` (its forward, not the graph's folded form): what the
        exported file is compared with."""
        with torch.no_grad():
            return tuple(self.original(*inputs))

    def batch_axes(self) -> dict[str, dict[int, str]]:
        """Each name's dynamic axes, as ``torch.onnx.export`` takes them."""
        return {name: {i: "B" for i, d in enumerate(shape) if d == "B"} for name, shape in self.shapes.items()}


class _FoldedMLP(nn.Module):
    """A ``FoldedMLP`` (normalisers folded into the first and last layers) as a module: (E, B, I) -> (E, B, O)."""

    def __init__(self, mlp: FoldedMLP) -> None:
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(w.clone(), requires_grad=False) for w in mlp.weights])
        self.biases = nn.ParameterList([nn.Parameter(b.clone(), requires_grad=False) for b in mlp.biases])
        self.activation = mlp.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            x = self.activation(torch.bmm(x, w) + b)
        return torch.bmm(x, self.weights[-1]) + self.biases[-1]


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus as relu(x) + log(1 + exp(-|x|)): the same values, and in onnxruntime a third of the time of
    its Softplus on a planning step's (E, B, S) log-variances."""
    return torch.relu(x) + torch.log(1 + torch.exp(-torch.abs(x)))


class _Dynamics(nn.Module):
    """Every member's next state and its calibrated standard deviation, from inputs dealt per member.

    The planners' inference form (``FoldedDynamics``): normalisers folded into the MLP, the bounded
    log-variance and calibration one ``exp``; checked against the model's own forward.
    """

    def __init__(self, model: EnsembleDynamics) -> None:
        super().__init__()
        folded = model.folded()
        self.mlp, self.obs_dim, self.probabilistic = _FoldedMLP(folded.mlp), model.obs_dim, model.probabilistic
        if self.probabilistic:
            for name in ("min_logvar", "max_logvar", "log_scale"):
                self.register_buffer(name, getattr(folded, name).clone())

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E, B, S), (E, B, A) -> mean (E, B, S), std (E, B, S) (zeros for a deterministic model)."""
        out = self.mlp(torch.cat([obs, action], -1))
        mean = obs + out[..., :self.obs_dim]
        if not self.probabilistic:
            return mean, torch.zeros_like(mean)
        high = self.max_logvar - _softplus(self.max_logvar - out[..., self.obs_dim:])  # soft_bound, as trained
        logvar = self.min_logvar + _softplus(high - self.min_logvar)
        return mean, torch.exp(logvar * 0.5 + self.log_scale)


class _Reward(nn.Module):
    """A reward model's per-member rewards through its folded MLP (``FoldedReward``)."""

    def __init__(self, model: RewardModel) -> None:
        super().__init__()
        self.mlp, self.members = _FoldedMLP(model.folded().mlp), model.members

    def forward(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> tuple[torch.Tensor]:
        """(B, S), (B, A), (B, S) -> (Er, B)."""
        x = torch.cat([obs, action, new_obs], -1)
        return (self.mlp(x.unsqueeze(0).expand(self.members, -1, -1))[..., 0],)


class _Transition(nn.Module):
    """A termination model's per-member probability, as a one-element tuple."""

    def __init__(self, model: TerminationModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, obs: torch.Tensor, action: torch.Tensor, new_obs: torch.Tensor) -> tuple[torch.Tensor]:
        """(B, S), (B, A), (B, S) -> (Er, B)."""
        return (self.model(obs, action, new_obs),)


class _Policy(nn.Module):
    """A ``PolicyNet``'s mean action from its raw features (``planners.policy.policy_features``)."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor]:
        """(B, F) -> (B, A)."""
        return (self.policy(features),)


def _draw(norm: Normalizer, lead: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random rows at the data's scale: mean + 2 std x standard normal, (*lead, D)."""
    noise = torch.randn(*lead, norm.mean.shape[0], generator=gen)
    return norm.mean + 2 * norm.std * noise


def dynamics_graph(model: EnsembleDynamics) -> Graph:
    """The whole ensemble as one graph: obs (E, B, S), action (E, B, A) -> mean, std (E, B, S).

    Inputs are dealt per member, as a planner's sampled rollout deals its rows (each member simulates
    its own); a caller with rows shared by every member repeats them E times.
    """
    e, s, a = model.members, model.obs_dim, model.act_dim

    def sample(b: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        x = _draw(model.in_norm, (e, b), gen)
        return x[..., :s].contiguous(), x[..., s:].contiguous()

    shapes: dict[str, list[int | str]] = {"obs": [e, "B", s], "action": [e, "B", a], "mean": [e, "B", s],
                                          "std": [e, "B", s]}

    def original(obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = model(obs, action)
        return pred.mean, (pred.var * pred.scale).sqrt()

    return Graph("dynamics", _Dynamics(model).eval(), ("obs", "action"), ("mean", "std"), shapes, sample, original)


def transition_graph(name: str, model: RewardModel | TerminationModel) -> Graph:
    """The reward ("reward": r(s, a, s')) or termination ("termination": p(terminal | s, a, s')) model:
    obs (B, S), action (B, A), new_obs (B, S) -> (Er, B), one row per member (planners average them)."""
    s, a = model.obs_dim, model.act_dim

    def sample(b: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        x = _draw(model.in_norm, (b,), gen)
        return x[:, :s].contiguous(), x[:, s:s + a].contiguous(), x[:, s + a:].contiguous()

    out = name if name == "reward" else "probability"
    shapes: dict[str, list[int | str]] = {"obs": ["B", s], "action": ["B", a], "new_obs": ["B", s],
                                          out: [model.members, "B"]}
    module = _Reward(model) if isinstance(model, RewardModel) else _Transition(model)
    return Graph(name, module.eval(), ("obs", "action", "new_obs"), (out,), shapes, sample,
                 lambda *inputs: (model(*inputs),))


def policy_graph(policy: nn.Module) -> Graph:
    """A ``PolicyNet``: features (B, F) -> action (B, A), inside the action box."""
    f, a = policy.feature_dim, policy.act_dim

    def sample(b: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        noise = torch.randn(b, f, generator=gen)
        return (policy.feature_mean + 2 * policy.feature_std * noise,)

    shapes: dict[str, list[int | str]] = {"features": ["B", f], "action": ["B", a]}
    return Graph("policy", _Policy(policy).eval(), ("features",), ("action",), shapes, sample,
                 lambda features: (policy(features),))
