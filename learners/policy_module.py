"""The RLModule PPO trains inside the world model: a ``PolicyNet`` actor, a learned log-std, a critic.

The actor IS the ``planners.policy.PolicyNet`` that serving loads, so exporting the trained policy is
``module.actor`` and nothing is converted. Its output is the mean action (already inside the action
box); exploration is a diagonal Gaussian around it with a state-independent log-std, whose samples the
module-to-env connector clips into the box (``clip_actions``; ``normalize_actions`` is off because the
mean is already in the env's units). The critic is a separate MLP on the same features, absent from
the env runners' inference-only copies.

Shapes: ``B`` batch rows, ``F`` policy input features, ``A`` action.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from planners.policy import PolicyConfig, PolicyNet

# The keys of the module's ``model_config`` (the RLModuleSpec travels to every env runner and learner).
OBS_DIM, ACT_DIM, ACT_LOW, ACT_HIGH = "obs_dim", "act_dim", "act_low", "act_high"
POLICY, ZONES, LOG_STD_INIT, CRITIC_HIDDEN = "policy", "zones", "log_std_init", "critic_hidden"
FEATURE_MEAN, FEATURE_STD = "feature_mean", "feature_std"


def module_config(actor: PolicyNet, *, log_std_init: float, critic_hidden: int) -> dict[str, Any]:
    """The ``model_config`` that rebuilds ``actor`` (architecture and input statistics) inside the module.

    Args:
        actor: a PolicyNet whose normalisation buffers are already fitted (its weights are not carried).
        log_std_init: the exploration log-std the Gaussian starts from, per action dimension.
        critic_hidden: width of the critic's two hidden layers.
    """
    mean, std = actor.feature_mean, actor.feature_std
    return {OBS_DIM: actor.obs_dim, ACT_DIM: actor.act_dim, ACT_LOW: actor.act_low.tolist(),
            ACT_HIGH: actor.act_high.tolist(), POLICY: actor.cfg.to_dict(), ZONES: actor.zones,
            LOG_STD_INIT: float(log_std_init), CRITIC_HIDDEN: int(critic_hidden),
            FEATURE_MEAN: mean.tolist(), FEATURE_STD: std.tolist()}


def actor_from_config(config: dict[str, Any]) -> PolicyNet:
    """A fresh PolicyNet as ``config`` (``module_config``'s output) describes it."""
    actor = PolicyNet(config[OBS_DIM], config[ACT_DIM], config[ACT_LOW], config[ACT_HIGH],
                      PolicyConfig(**config[POLICY]), zones=config[ZONES])
    actor.set_normalisation(torch.tensor(config[FEATURE_MEAN]), torch.tensor(config[FEATURE_STD]))
    return actor


class _Critic(nn.Module):
    """V(features): normalised input, two tanh layers, one output. (B, F) -> (B,)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        f = mean.numel()
        self.net = nn.Sequential(nn.Linear(f, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.mean) / self.std).squeeze(-1)


class PolicyModule(TorchRLModule, ValueFunctionAPI, InferenceOnlyAPI):
    """PPO's module: ``actor`` (PolicyNet, the mean action), ``log_std`` (A,), ``critic`` (learners only)."""

    def setup(self) -> None:
        config = self.model_config
        self.actor = actor_from_config(config)
        f = self.actor.feature_dim
        if self.observation_space is not None and self.observation_space.shape != (f,):
            raise ValueError(f"the env's observations have shape {self.observation_space.shape}; the policy "
                             f"takes ({f},) features (PolicyNet.features)")
        self.log_std = nn.Parameter(torch.full((config[ACT_DIM],), float(config[LOG_STD_INIT])))
        self.critic = _Critic(torch.tensor(config[FEATURE_MEAN]), torch.tensor(config[FEATURE_STD]),
                              config[CRITIC_HIDDEN])

    def get_non_inference_attributes(self) -> list[str]:
        return ["critic"]

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """The Gaussian's inputs: (B, 2A) = the actor's mean, then the log-std broadcast over the batch."""
        mean = self.actor(batch[Columns.OBS])  # (B, A)
        return {Columns.ACTION_DIST_INPUTS: torch.cat([mean, self.log_std.expand_as(mean)], -1)}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        """V of each row: (B,)."""
        return self.critic(batch[Columns.OBS])
