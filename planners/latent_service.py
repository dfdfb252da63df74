"""A served latent planner: camera agents' frame stacks in, actions out, through a ``LatentWorldModel``.

The served planners' interface (``planners.service.FleetPlanner``: ``plan``, ``explain``, ``describe``,
``warmup``, ``score``), for a latent artifact (``worldmodel.latent_artifact``). One call encodes the N agents'
frame stacks in one encoder batch (for a recurrent model, corrected from each agent's predicted latent, which
travels as its hidden state), then CEM searches the latent space for all of them at once
(``planners.latent_eval.latent_planner``: the model's reward and breach heads score the plans). Where the
members disagree past ``PlanConfig.disagreement_threshold`` the fallback (the zero action) acts, as for vector
models; a call short of time for a whole CEM round samples as many candidates as fit (``CEMPlanner``'s
``shrink``), and one short of time for any has each agent go on with its previous plan (``BasePlanner``'s
``hold_plan``: no policy to fall back on, and a coasting agent keeps its speed). Observations are pixels, so the
state constraints (zones, box, speed) have nothing to read: only the action bounds apply, and no shield runs.
``PlanBatch.trajectory`` holds latents' moving parts.

Shapes: ``N`` agents, ``F`` stacked frames, ``H, W, C`` frame shape, ``Hz`` horizon, ``Z`` latent, ``M`` its moving
part, ``A`` action, ``B`` logged rows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from planners.base import BasePlanner
from planners.cem import CEMConfig
from planners.explain import Explanation, explain
from planners.config import BREACH_WEIGHT
from planners.latent_eval import latent_planner, planning_inputs
from planners.registry import settings_arguments
from planners.served import PlanBatch, ServiceConfig, constraint_params, empty_batch, fill, one_row
from worldmodel.latent_artifact import LatentArtifact, load_latent_model

LATENT_OBJECTIVES = ("learned",)
"""The one objective a latent model serves: its learned reward (with the learned breach cost)."""


class LatentPlanner:
    """Decides for batches of camera agents with one latent model version.

    Args:
        artifact: the loaded latent artifact (its model on the device to plan on).
        cfg: planner settings: ``latent`` and the 'cem' planner's ``settings``; other planners are refused.
        breach_weight: cost of a predicted breach (0: plan for the reward alone).
    """

    zones = False

    def __init__(self, artifact: LatentArtifact, cfg: ServiceConfig | None = None,
                 breach_weight: float = BREACH_WEIGHT) -> None:
        self.model, self.cfg = artifact, cfg or ServiceConfig()
        if self.cfg.planner != "cem":
            raise ValueError(f"latent models plan with 'cem', got planner {self.cfg.planner!r}")
        self.latent = artifact.model.eval()
        self.recurrent = self.latent.cfg.recurrent
        """A recurrent latent model (``LatentConfig.recurrent``): each agent's predicted latent travels as its
        hidden state (Z,) and the next request's frames correct it; otherwise the frame stack is all the history."""
        self.hidden_size = self.latent.cfg.state_dim if self.recurrent else 0
        """Entries of one agent's hidden state (Z; 0 without one)."""
        cem = settings_arguments("cem", self.cfg.settings).get("cem", CEMConfig())
        # A call short of time for a whole round plans with the candidates that fit. No policy to fall back on: a
        # call short of time for any has its agents go on with their previous plans (the zero action would let
        # them coast on at their speed), those without one with the zero action.
        self.planner: BasePlanner = latent_planner(self.latent, self.cfg.latent, cem, breach_weight, served=True)
        self.fallback_source = self.planner.fallback_source
        """'plan': see ``BasePlanner``'s ``hold_plan``."""

    @classmethod
    def load(cls, model_dir: str | Path, cfg: ServiceConfig | None = None,
             device: str | torch.device = "cpu") -> "LatentPlanner":
        """The latent model of ``model_dir``, verified, on ``device`` (``ArtifactError`` when it does not load)."""
        return cls(load_latent_model(model_dir, device=device), cfg)

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def objectives(self) -> tuple[str, ...]:
        return LATENT_OBJECTIVES

    @property
    def obs_dim(self) -> int:
        """S = 0: the observation is the frame alone."""
        return 0

    @property
    def stack_shape(self) -> tuple[int, int, int, int]:
        """(F, H, W, C) of one agent's frame stack."""
        return (self.latent.cfg.frames, *self.latent.cfg.image_shape)

    @property
    def horizon(self) -> int:
        return self.cfg.latent.horizon

    def describe(self) -> dict[str, Any]:
        """What is served (``FleetPlanner.describe``'s keys, the frame shape and the stack depth)."""
        spec = self.model.spec
        return {"model_version": self.version, "env_id": spec.env_id, "obs_dim": 0, "act_dim": spec.act_dim,
                "image_shape": list(self.latent.cfg.image_shape), "frames": self.latent.cfg.frames,
                "latent_dim": self.latent.cfg.state_dim, "objectives": list(self.objectives), "zones": False,
                "sites": False, "planner": self.cfg.planner, "planner_settings": self.cfg.planner_settings,
                "horizon": self.horizon, "prior_share": self.cfg.latent.prior_share, "policy": None, "modes": ["plan"],
                "shield": None, "fallback_action_by": self.fallback_source, "device": str(self.model.device)}

    def warmup(self, sizes: tuple[int, ...] = (1, 8, 64)) -> None:
        """Plan once untimed at a few batch sizes, so the budget has round-time estimates."""
        for n in sizes:
            self.plan(np.zeros((n, *self.stack_shape), np.uint8))

    def encode(self, stacks: np.ndarray) -> torch.Tensor:
        """(N, F', H, W, C) uint8 frame stacks -> (N, Z) latents, in one encoder batch.

        A stack of another depth F' (kept by a server for a model stacking another number of frames) is cut to
        its last F frames, or its oldest frame repeated before it, as at an episode's start."""
        array, f = np.asarray(stacks), self.stack_shape[0]
        if array.dtype != np.uint8 or array.ndim != 5 or array.shape[2:] != self.stack_shape[1:] or \
                array.shape[1] < 1:
            raise ValueError(f"obs must be (N, {', '.join(map(str, self.stack_shape))}) uint8 frame stacks, got "
                             f"{array.dtype} {array.shape}")
        if array.shape[1] != f:
            oldest = np.repeat(array[:, :1], max(f - array.shape[1], 0), axis=1)
            array = np.concatenate([oldest, array], axis=1)[:, -f:]  # (N, F, H, W, C)
        return self.latent.encode(torch.as_tensor(array, device=self.model.device))

    @torch.no_grad()
    def plan(self, obs: np.ndarray, warm_start: np.ndarray | None = None, objectives: list[str] | None = None,
             constraints: dict[str, np.ndarray] | None = None, budget_ms: float | None = None,
             hidden: np.ndarray | None = None, modes: list[str] | None = None,
             sites: list[str | None] | None = None, rewards: list[Any] | None = None) -> PlanBatch:
        """Decide for N camera agents (``FleetPlanner.plan``'s arguments).

        Args:
            obs: (N, F, H, W, C) uint8 each agent's last F frames, oldest first.
            warm_start: (N, Hz, A), NaN rows where an agent has none; another shape is ignored.
            objectives: per agent 'learned' (the one objective); modes: per agent 'plan'.
            constraints: ``ACTION_LOW`` / ``ACTION_HIGH`` only (N, A).
            budget_ms: hard time budget of the call (the config's when None).
            hidden: recurrent models: (N, Z) each agent's predicted latent from its last request (NaN rows, or
                another shape: none, the frames alone); ignored otherwise.
            sites, rewards: none apply to latent models (refused).

        Returns:
            the ``PlanBatch``: trajectories are (N, Hz+1, M) latents' moving parts (the zone map stays put);
            ``hidden`` (N, Z) the members' mean prediction of each agent's next latent under its action (recurrent
            models), else None.
        """
        start = time.perf_counter()
        n = len(obs)
        self._check(n, objectives, modes, sites, rewards)
        z = self.encode(obs)  # (N, Z): every agent in one encoder call
        if self.recurrent and hidden is not None and np.shape(hidden) == tuple(z.shape):
            prior = torch.as_tensor(np.asarray(hidden, np.float32), device=z.device)
            known = ~torch.isnan(prior).any(-1, keepdim=True)  # (N, 1): a fresh agent starts from its frames
            z = torch.where(known, self.latent.correct(torch.nan_to_num(prior), z), z)
        state, zone_map = planning_inputs(self.latent, z)  # (N, M), {ZONE_MAP: (N, G*G)}
        params = constraint_params(constraints, n, z.device, states=False) | zone_map
        h, a = self.horizon, self.model.spec.act_dim
        start_plan = self.planner.initial_plan(n)  # (N, Hz, A)
        if warm_start is not None and np.shape(warm_start) == (n, h, a):
            w = torch.as_tensor(np.asarray(warm_start, np.float32), device=z.device)
            start_plan = torch.where(torch.isnan(w).any(-1).any(-1)[:, None, None], start_plan, w)
        budget = self.cfg.latent.budget_ms if budget_ms is None else budget_ms
        if budget is not None:  # the encoder's time counts against the call's deadline too
            budget = max(budget - (time.perf_counter() - start) * 1000, 0.01)
        result = self.planner.plan(state, params, warm_start=start_plan, budget_ms=budget)
        out = empty_batch(n, h, self.latent.cfg.moving, a)
        fill(out, np.arange(n), result)
        after = None
        if self.recurrent:  # what the frames of the next request will correct
            actions = torch.as_tensor(out["actions"], device=z.device)
            after = self.latent.next(z, actions).mean(0).cpu().numpy()  # (N, Z)
        return PlanBatch(**out, hidden=after, iterations=result.iterations,
                         elapsed_ms=(time.perf_counter() - start) * 1000, model_version=self.version,
                         fallback_source=self.fallback_source)

    def _check(self, n: int, objectives: list[str] | None, modes: list[str] | None,
               sites: list[str | None] | None, rewards: list[Any] | None) -> None:
        """Raise naming what a latent model does not serve, or per-agent lists of the wrong length."""
        for name, values, allowed in (("objective", objectives, LATENT_OBJECTIVES), ("mode", modes, ("plan",))):
            if values is None:
                continue
            if len(values) != n:
                raise ValueError(f"{name}s must have one entry per agent ({n}), got {len(values)}")
            bad = sorted(set(values) - set(allowed))
            if bad:
                raise ValueError(f"unknown {name} {bad[0]!r}; latent model {self.version} serves "
                                 f"{', '.join(allowed)}")
        if any(site is not None for site in sites or []):
            raise ValueError(f"site is for Warehouse-v1 models; latent model {self.version} plans each agent alone")
        if any(r is not None for r in rewards or []):
            raise ValueError(f"reward models score vector states; latent model {self.version} plans with its own")

    def explain(self, obs: np.ndarray, objective: str = "learned", constraints: dict[str, np.ndarray] | None = None,
                warm_start: np.ndarray | None = None, proposals: np.ndarray | None = None,
                alternatives: int = 3, reward: Any = None) -> Explanation:
        """Why one agent's action (``FleetPlanner.explain``): obs is its (F, H, W, C) frame stack, encoded alone
        (a recurrent model's explanation starts from the frames, not from the filtered latent it planned from)."""
        self._check(1, [objective], ["plan"], None, None if reward is None else [reward])
        with torch.no_grad():
            z = self.encode(np.asarray(obs)[None])  # (1, Z)
        state, zone_map = planning_inputs(self.latent, z)
        params = constraint_params({k: one_row(k, v) for k, v in (constraints or {}).items()}, 1, z.device,
                                   states=False) | zone_map
        start = None
        if warm_start is not None and np.shape(warm_start) == (self.horizon, self.model.spec.act_dim) and \
                not np.isnan(warm_start).any():
            start = torch.as_tensor(np.asarray(warm_start, np.float32), device=z.device)[None]
        return explain(self.planner, state, params, start, proposals, alternatives)

    def score(self, obs: np.ndarray, actions: np.ndarray, new_obs: np.ndarray) -> dict[str, Any]:
        """Prediction error of B logged transitions: per row, their mean, and the version that predicted."""
        errors = self.prediction_error(obs, actions, new_obs)
        return {"model_version": self.version, "errors": errors, "mean_error": float(errors.mean())}

    @torch.no_grad()
    def prediction_error(self, obs: np.ndarray, actions: np.ndarray, new_obs: np.ndarray) -> np.ndarray:
        """Per-row one-step error in the latent: (B,) RMS over the predicted entries of the members' mean next
        latent against the encoding of the stack that followed, in units of the typical one-step change.

        Args: obs, new_obs: (B, F, H, W, C) uint8 stacks; actions: (B, A)."""
        z, target = self.encode(obs), self.encode(new_obs)  # (B, Z) each
        a = torch.as_tensor(np.asarray(actions, np.float32), device=z.device)
        moving = self.latent.cfg.moving
        error = (self.latent.next(z, a).mean(0) - target)[:, :moving] / self.latent.step_std[:moving]
        return error.square().mean(-1).sqrt().cpu().numpy()
