"""The world model as one object: dynamics, reward and termination models with their provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.dynamics import DeterministicDynamics, ProbabilisticEnsemble
from worldmodel.envs import SpaceSpec
from worldmodel.fleet_data import layout_for
from worldmodel.fleet_dynamics import FleetEnsemble
from worldmodel.mc_dropout import MCDropoutDynamics
from worldmodel.recurrent import RecurrentDynamics
from worldmodel.reward import RewardModel, TerminationModel


def build_dynamics(spec: SpaceSpec, cfg: ModelConfig) -> nn.Module:
    """A fresh, untrained dynamics model of the configured kind."""
    s, a = spec.obs_dim, spec.act_dim
    if cfg.dynamics == "ensemble" and cfg.uncertainty == "mc_dropout":
        return MCDropoutDynamics(s, a, cfg.ensemble_size, cfg.hidden, cfg.layers, cfg.activation, cfg.dropout)
    if cfg.dynamics == "ensemble":
        return ProbabilisticEnsemble(s, a, cfg.ensemble_size, cfg.hidden, cfg.layers, cfg.activation)
    if cfg.dynamics == "mlp":
        return DeterministicDynamics(s, a, cfg.ensemble_size, cfg.hidden, cfg.layers, cfg.activation)
    if cfg.dynamics == "fleet":
        layout = layout_for(spec.env_id)
        if layout.obs_dim != s:
            raise ValueError(f"{spec.env_id}'s fleet layout spans {layout.obs_dim} observation dims, the spec has {s}")
        return FleetEnsemble(layout, a, cfg.ensemble_size, cfg.hidden, cfg.layers, cfg.activation)
    return RecurrentDynamics(s, a, cfg.hidden, cfg.ensemble_size)


def build_reward(spec: SpaceSpec, cfg: ModelConfig) -> RewardModel:
    return RewardModel(spec.obs_dim, spec.act_dim, cfg.reward_hidden, cfg.reward_layers, activation=cfg.activation)


def build_termination(spec: SpaceSpec, cfg: ModelConfig) -> TerminationModel:
    return TerminationModel(spec.obs_dim, spec.act_dim, cfg.reward_hidden, cfg.reward_layers,
                            activation=cfg.activation)


@dataclass
class WorldModel:
    """A trained world model and what it was trained on.

    Attributes:
        spec: observation/action sizes and action bounds of the environment.
        model_config: the networks' architecture.
        train_config: how they were fitted.
        dynamics: next-state model (ensemble, MLP, GRU, or the fleet model of the physical state alone).
        reward: reward model r(s, a, s').
        termination: p(terminal | s, a, s'), or None when the data had no terminal states.
        version: semantic version, "MAJOR.MINOR.PATCH".
        data_fingerprint: "sha256:..." of the training logs ("" when trained from memory).
        metrics: held-out metrics computed at training time.
    """

    spec: SpaceSpec
    model_config: ModelConfig
    train_config: TrainConfig
    dynamics: nn.Module
    reward: RewardModel
    termination: TerminationModel | None
    version: str = "0.1.0"
    data_fingerprint: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def modules(self) -> dict[str, nn.Module]:
        """The networks by artifact file stem."""
        out: dict[str, nn.Module] = {"dynamics": self.dynamics, "reward": self.reward}
        if self.termination is not None:
            out["termination"] = self.termination
        return out

    def to(self, device: torch.device | str) -> "WorldModel":
        for module in self.modules().values():
            module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.dynamics.buffers()).device
