"""A served planner: a world model and planners ready to answer batches of agents, numpy in and out.

This is the Ray-free core that the ensemble-worker actors and the Serve planner
deployment host. One call decides for every agent in the batch; agents may ask for
different objectives ('learned' reward or Nav2D's 'goal' reward) and modes ('plan', or
'policy': the model's policy alone, shielded), each kind decided in one batched call, and
carry their own goals and constraints. A model directory's policy, when it has one, is the
planners' fallback (and their prior when ``PlanConfig.prior_share`` > 0); on Nav2D models a
shield checks every answer against the request's constraints.

Shapes: ``N`` agents, ``H`` horizon, ``S`` state, ``A`` action, ``Z`` zones, ``M`` proposals.
``ServiceConfig`` and ``PlanBatch`` live in ``planners.served`` and are importable from here too.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from planners import OBJECTIVES, make_planner
from planners.base import BasePlanner, PlanResult
from planners.config import MODES
from planners.evaluate import build_objective
from planners.explain import Explanation, explain
from planners.latent_service import LatentPlanner
from planners.objectives import GOAL, ZONES, Objective, Params
from planners.policy import PolicyNet
from planners.policy_artifact import load_policy, policy_info
from planners.rollout import HIDDEN, is_recurrent
from planners.served import PlanBatch, ServiceConfig, constraint_params, empty_batch, fill, one_row
from planners.shield import Shield
from planners.warehouse_service import WarehousePlanner, is_fleet_model
from worldmodel.artifact import load_model
from worldmodel.envs import NAV2D_ID
from worldmodel.envs.nav2d import GOAL_DIMS
from worldmodel.latent_artifact import is_latent_model
from worldmodel.model import WorldModel
from worldmodel.reward_artifact import RewardArtifact

__all__ = ["FleetPlanner", "PlanBatch", "ServiceConfig", "load_planner"]

REWARD_PLANNERS = 4
"""Planners kept for reward models named by requests (least recently used dropped first): a few, since a
fleet names one or two reward models at a time, and rebuilding one only folds its reward network again."""


class FleetPlanner:
    """Decides for batches of agents with one world model version (and its policy, when it has one).

    Args:
        model: the world model (on the device to plan on).
        cfg: planner settings.
        policy: the model's policy (``planners.policy_artifact.load_policy``): the planners' fallback, their
            prior when ``cfg.plan.prior_share`` > 0, and what 'policy' mode serves. None: the zero action
            falls back and 'policy' mode is refused.
        policy_info: its policy.json (``policy_info``), reported by ``describe``.
    """

    def __init__(self, model: WorldModel, cfg: ServiceConfig | None = None, policy: PolicyNet | None = None,
                 policy_info: dict[str, Any] | None = None) -> None:
        self.model, self.cfg = model, cfg or ServiceConfig()
        self.zones = model.spec.env_id == NAV2D_ID
        self.recurrent = is_recurrent(model.dynamics)
        """A GRU model: each agent's hidden state comes in with its request and goes back updated."""
        self.hidden_size = model.dynamics.state_size if self.recurrent else 0
        """Entries of one agent's hidden state (E*Hd; 0 without one)."""
        spec = model.spec
        if policy is not None and (policy.obs_dim, policy.act_dim) != (spec.obs_dim, spec.act_dim):
            raise ValueError(f"the policy's (S, A) = ({policy.obs_dim}, {policy.act_dim}) do not match model "
                             f"{model.version}'s ({spec.obs_dim}, {spec.act_dim})")
        self.policy = None if policy is None else policy.to(model.device).eval()
        self.policy_info = policy_info if policy is not None else None
        act = None if self.policy is None else self.policy.act
        # The shield checks zones, boxes and speeds: Nav2D's constraints (a GRU's members from each agent's state).
        shield = Shield(model.dynamics, self.cfg.shield_horizon) if self.zones and self.cfg.shield else None
        self._planner_parts = (torch.tensor(spec.act_low), torch.tensor(spec.act_high), act, shield)
        self.planners: dict[str, BasePlanner] = {
            name: self._make(build_objective(model, name, zones=self.zones))
            for name in (OBJECTIVES if self.zones else ("learned",))}
        self._reward_planners: OrderedDict[str, BasePlanner] = OrderedDict()
        """'learned' planners whose reward is a separately trained reward model, by its version."""

    def _make(self, objective: Objective) -> BasePlanner:
        """A planner of this model for ``objective``: every planner here is built this one way."""
        low, high, act, shield = self._planner_parts
        return make_planner(self.cfg.planner, self.model.dynamics, objective, low, high, self.cfg.plan,
                            fallback=act, settings=self.cfg.planner_settings, prior=act, shield=shield)

    @classmethod
    def load(cls, model_dir: str | Path, cfg: ServiceConfig | None = None,
             device: str | torch.device = "cpu") -> "FleetPlanner":
        """The model of ``model_dir`` with its policy (when it has one), verified, on ``device``.

        Raises:
            ArtifactError: the model or its policy (``PolicyError``) is corrupted or does not fit.
        """
        model = load_model(model_dir, device=device)
        return cls(model, cfg, load_policy(model_dir, device=device), policy_info(model_dir))

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def objectives(self) -> tuple[str, ...]:
        return tuple(self.planners)

    @property
    def obs_dim(self) -> int:
        return self.model.spec.obs_dim

    @property
    def horizon(self) -> int:
        return self.cfg.plan.horizon

    @property
    def fallback_source(self) -> str:
        """Who the fallback is: 'policy' or 'zero'."""
        return "zero" if self.policy is None else "policy"

    def describe(self) -> dict[str, Any]:
        """What is served: version, env and sizes, objectives, planner, policy, shield (its horizon, or None), what
        acts as the fallback (``fallback_action_by``), device (JSON-friendly)."""
        spec = self.model.spec
        return {"model_version": self.version, "env_id": spec.env_id, "obs_dim": self.obs_dim,
                "act_dim": spec.act_dim, "objectives": list(self.objectives), "zones": self.zones, "sites": False,
                "planner": self.cfg.planner, "planner_settings": self.cfg.planner_settings, "horizon": self.horizon,
                "prior_share": self.cfg.plan.prior_share, "policy": self._policy_summary(),
                "modes": list(MODES) if self.policy is not None else ["plan"],
                "shield": self._shield_horizon(), "fallback_action_by": self.fallback_source,
                "device": str(self.model.device)}

    def _shield_horizon(self) -> int | None:
        """The steps the shield checks ahead, or None without a shield."""
        shield = next(iter(self.planners.values())).shield
        return None if shield is None else shield.horizon

    def _policy_summary(self) -> dict[str, Any] | None:
        """The served policy's version and lineage (from its policy.json), or None without one."""
        if self.policy is None:
            return None
        info = self.policy_info or {}
        return {"version": info.get("version"), "parent": info.get("parent"), "created": info.get("created"),
                "model_version": info.get("model_version"), "config": self.policy.cfg.to_dict()}

    def warmup(self, sizes: tuple[int, ...] = (1, 8, 64)) -> None:
        """Plan once untimed at a few batch sizes, so the budget has round-time estimates."""
        for n in sizes:
            for name in self.planners:
                self.plan(np.zeros((n, self.obs_dim), np.float32), objectives=[name] * n)

    @torch.no_grad()
    def plan(self, obs: np.ndarray, warm_start: np.ndarray | None = None, objectives: list[str] | None = None,
             constraints: dict[str, np.ndarray] | None = None, budget_ms: float | None = None,
             hidden: np.ndarray | None = None, modes: list[str] | None = None,
             sites: list[str | None] | None = None, rewards: list[RewardArtifact | None] | None = None) -> PlanBatch:
        """Decide for N agents.

        Args:
            obs: (N, S) current observations.
            warm_start: (N, H, A) warm starts (already shifted), NaN rows where an agent has none; any other
                shape (plans of another horizon or model) is ignored: every agent starts cold.
            objectives: per agent, one of ``self.objectives`` (default all 'learned').
            constraints: per-agent arrays by ``planners.objectives`` key (``planners.served.CONSTRAINT_DIMS``):
                ``ZONES``, ``BOX`` and ``MAX_SPEED`` (Nav2D only) padded so that an agent without one is
                unconstrained (radius 0, +-inf, inf), ``ACTION_LOW``/``ACTION_HIGH`` (+-inf: the model's box).
            budget_ms: hard time budget of the call (the config's when None).
            hidden: (N, E*Hd) recurrent models only: each agent's hidden state, NaN rows for a fresh one; any
                other shape (another model's states) is ignored: every agent starts fresh.
            modes: per agent, 'plan' (default) or 'policy' (the policy's action, shielded; no planning).
            sites: lone agents have none (all None): sites are the warehouse's (``WarehousePlanner``).
            rewards: per agent, a reward model (``worldmodel.reward_artifact``) its 'learned' objective plans
                with in place of the world model's own reward, or None for the model's own.

        Returns:
            the ``PlanBatch`` of the N agents, in order (``reward_models`` says which reward model planned each).
        """
        start = time.perf_counter()
        n, device = len(obs), self.model.device
        objectives, modes = objectives or ["learned"] * n, modes or ["plan"] * n
        self._check(n, objectives, modes)
        # Which reward plans each agent: "" the model's own; a reward model only for a planned learned objective.
        named = rewards or [None] * n
        if len(named) != n:
            raise ValueError(f"rewards must have one entry per agent ({n}), got {len(named)}")
        keys = np.asarray([r.version if r is not None and o == "learned" and m == "plan" else ""
                           for r, o, m in zip(named, objectives, modes)], dtype=object)
        by_version = {r.version: r for r in named if r is not None}
        if any(site is not None for site in sites or []):
            raise ValueError(f"site is for Warehouse-v1 models; model {self.version} plans each agent alone")
        obs_t = torch.as_tensor(np.asarray(obs, np.float32), device=device)
        if obs_t.dim() != 2 or obs_t.shape[1] != self.obs_dim:
            raise ValueError(f"obs must be (N, {self.obs_dim}), got {tuple(obs_t.shape)}")
        h, a = self.horizon, self.model.spec.act_dim
        if warm_start is not None and np.shape(warm_start) != (n, h, a):
            warm_start = None  # left by another horizon or model: no start for these plans
        out = empty_batch(n, h, self.obs_dim, a)
        params = self._params(obs_t, constraints)
        h_all = self._hidden(obs_t, hidden)  # (N, E*Hd) or None
        if h_all is not None:
            params[HIDDEN] = h_all
        iterations = []
        names, kinds = np.asarray(objectives), np.asarray(modes)
        for key in dict.fromkeys(keys.tolist()):  # at most one call per reward, objective kind and mode
            planners = self.planners if key == "" else {"learned": self._with_reward(by_version[key])}
            for name, planner in planners.items():
                for mode in MODES:
                    rows = np.flatnonzero((names == name) & (kinds == mode) & (keys == key))
                    if len(rows):
                        result = self._decide_rows(planner, mode, rows, obs_t, params, warm_start, budget_ms)
                        fill(out, rows, result)
                        iterations += [result.iterations] if mode == "plan" else []
        next_hidden = None
        if h_all is not None:  # the state after observing obs and taking the chosen action
            actions_t = torch.as_tensor(out["actions"], device=device)
            next_hidden = self.model.dynamics.step(h_all, obs_t, actions_t)[0].cpu().numpy()
        return PlanBatch(**out, hidden=next_hidden, iterations=min(iterations, default=0),
                         elapsed_ms=(time.perf_counter() - start) * 1000, model_version=self.version,
                         fallback_source=self.fallback_source, reward_models=[k or None for k in keys.tolist()])

    def _with_reward(self, reward: RewardArtifact) -> BasePlanner:
        """The 'learned' planner scoring plans with ``reward`` (built on first use, a few kept by version).

        Raises:
            RewardMismatch: ``reward`` does not read this model's spaces.
        """
        if reward.version in self._reward_planners:
            self._reward_planners.move_to_end(reward.version)
            return self._reward_planners[reward.version]
        reward.check_fits(self.model.spec, f"model {self.version}")
        reward.to(self.model.device)
        objective = build_objective(self.model, "learned", zones=self.zones).with_reward(reward.reward)
        planner = self._reward_planners[reward.version] = self._make(objective)
        while len(self._reward_planners) > REWARD_PLANNERS:
            self._reward_planners.popitem(last=False)
        return planner

    def _check(self, n: int, objectives: list[str], modes: list[str]) -> None:
        """Raise naming an objective or mode this model does not serve, or lists of the wrong length."""
        if len(objectives) != n or len(modes) != n:
            raise ValueError(f"objectives and modes must have one entry per agent ({n}), got "
                             f"{len(objectives)} and {len(modes)}")
        unknown = sorted(set(objectives) - set(self.planners))
        if unknown:
            raise ValueError(f"unknown objective {unknown[0]!r}; this model serves {', '.join(self.planners)}")
        bad = sorted(set(modes) - set(MODES))
        if bad:
            raise ValueError(f"unknown mode {bad[0]!r}; choose one of {', '.join(MODES)}")
        if "policy" in modes and self.policy is None:
            raise ValueError(f"mode 'policy' needs a policy, and model {self.version} has none "
                             "(train one with `wm policy train`)")

    def _decide_rows(self, planner: BasePlanner, mode: str, rows: np.ndarray, obs: torch.Tensor, params: Params,
                     warm_start: np.ndarray | None, budget_ms: float | None) -> PlanResult:
        """Decide for the agents at ``rows`` (one objective kind, one mode)."""
        idx = torch.as_tensor(rows, device=obs.device)
        mine = {k: v[idx] for k, v in params.items()}
        if mode == "policy":
            return planner.act(obs[idx], mine)
        start_plan = planner.initial_plan(len(rows))
        if warm_start is not None:
            w = torch.as_tensor(np.asarray(warm_start, np.float32)[rows], device=obs.device)
            have = ~torch.isnan(w).any(-1).any(-1)  # (n,)
            start_plan = torch.where(have[:, None, None], w, start_plan)
        return planner.plan(obs[idx], mine, warm_start=start_plan, budget_ms=budget_ms)

    def _hidden(self, obs: torch.Tensor, hidden: np.ndarray | None) -> torch.Tensor | None:
        if not self.recurrent:
            return None
        fresh = self.model.dynamics.initial_state(len(obs))  # (N, E*Hd)
        if hidden is None:
            return fresh
        h = torch.as_tensor(np.asarray(hidden, np.float32), device=obs.device)
        if h.shape != fresh.shape:  # left by another model: no state of this one
            return fresh
        return torch.where(torch.isnan(h).any(-1, keepdim=True), fresh, h)

    def _params(self, obs: torch.Tensor, constraints: dict[str, np.ndarray] | None) -> Params:
        """The N agents' objective parameters: Nav2D's goals (from obs) and zones (none: one empty slot),
        and the constraints this model takes."""
        params: Params = {}
        if self.zones:
            params[GOAL] = obs[:, GOAL_DIMS]
            params[ZONES] = obs.new_zeros(len(obs), 1, 3)  # the zone cost needs the key; radius 0 costs nothing
        return params | constraint_params(constraints, len(obs), obs.device, states=self.zones)

    def explain(self, obs: np.ndarray, objective: str = "learned", constraints: dict[str, np.ndarray] | None = None,
                warm_start: np.ndarray | None = None, proposals: np.ndarray | None = None,
                alternatives: int = 3, reward: RewardArtifact | None = None) -> Explanation:
        """Why one agent's action: plan once with the served settings and explain it (``planners.explain``).

        Args:
            obs: (S,) the agent's observation; objective: one of ``self.objectives``.
            constraints: as ``plan``'s, for this one agent: arrays with or without the leading N = 1.
            warm_start: (H, A) its warm start, or None (NaN rows or another shape: none).
            proposals: (M, A) actions held for H steps, or (M, H, A) sequences.
            alternatives: how many of the planner's best other candidates to show.
            reward: a registered reward model the 'learned' objective scores with (None: the model's own).
        """
        self._check(1, [objective], ["plan"])
        obs_t = torch.as_tensor(np.asarray(obs, np.float32), device=self.model.device).reshape(1, -1)
        if obs_t.shape[1] != self.obs_dim:
            raise ValueError(f"obs must be (S,) = ({self.obs_dim},), got {np.shape(obs)}")
        rows = {k: one_row(k, v) for k, v in (constraints or {}).items()}
        params = self._params(obs_t, rows)
        h_all = self._hidden(obs_t, None)
        if h_all is not None:
            params[HIDDEN] = h_all
        planner = self._with_reward(reward) if reward is not None and objective == "learned" else \
            self.planners[objective]
        start = None
        if warm_start is not None and np.shape(warm_start) == (self.horizon, self.model.spec.act_dim) and \
                not np.isnan(warm_start).any():
            start = torch.as_tensor(np.asarray(warm_start, np.float32), device=obs_t.device)[None]
        return explain(planner, obs_t, params, start, proposals, alternatives)

    def score(self, obs: np.ndarray, actions: np.ndarray, new_obs: np.ndarray) -> dict[str, Any]:
        """Prediction error of B logged transitions: per row, their mean, and the version that predicted."""
        errors = self.prediction_error(obs, actions, new_obs)
        return {"model_version": self.version, "errors": errors, "mean_error": float(errors.mean())}

    @torch.no_grad()
    def prediction_error(self, obs: np.ndarray, actions: np.ndarray, new_obs: np.ndarray) -> np.ndarray:
        """Per-row one-step prediction error: (B,) Euclidean distance of the ensemble mean from new_obs."""
        device = self.model.device
        o, a, n = (torch.as_tensor(np.asarray(x, np.float32), device=device) for x in (obs, actions, new_obs))
        if self.recurrent:  # one step from a fresh hidden state: logged rows carry no history here
            mean = self.model.dynamics.step(self.model.dynamics.initial_state(len(o)), o, a)[1].mean.mean(0)
        else:
            mean, _ = self.model.dynamics(o, a).moments()  # (B, S) ensemble mean
        return (mean - n).norm(dim=-1).cpu().numpy()



def load_planner(model_dir: str | Path, cfg: ServiceConfig | None = None,
                 device: str | torch.device = "cpu") -> "FleetPlanner | WarehousePlanner | LatentPlanner":
    """The served planner of ``model_dir``: a ``LatentPlanner`` for a latent (camera) model, a ``WarehousePlanner``
    for a Warehouse-v1 fleet model (its robots planned jointly by site), else a ``FleetPlanner``.

    Raises:
        ArtifactError: the model or its policy is corrupted or does not fit.
    """
    if is_latent_model(model_dir):
        return LatentPlanner.load(model_dir, cfg, device=device)
    model = load_model(model_dir, device=device)
    policy = load_policy(model_dir, device=device)
    if is_fleet_model(model):
        return WarehousePlanner(model, cfg, policy)
    return FleetPlanner(model, cfg, policy, policy_info(model_dir))
