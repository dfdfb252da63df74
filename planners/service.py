"""A served planner: a world model and planners ready to answer batches of agents, numpy in and out.

This is the Ray-free core that the ensemble-worker actors and the Serve planner
deployment host. One call plans for every agent in the batch; agents may ask for
different objectives ('learned' reward or Nav2D's 'goal' reward), each kind
planned in one batched call, and carry their own goals and no-fly zones.

Shapes: ``N`` agents, ``H`` horizon, ``S`` state, ``A`` action, ``Z`` zones.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from planners import OBJECTIVES, PlanConfig, make_planner, resolved_settings, shift_plan
from planners.base import BasePlanner, Fallback
from planners.config import DEFAULT_PLANNER
from planners.evaluate import build_objective
from planners.objectives import GOAL, ZONES
from planners.rollout import HIDDEN, is_recurrent
from worldmodel.config import config_from_dict
from worldmodel.envs import NAV2D_ID
from worldmodel.envs.nav2d import GOAL_DIMS
from worldmodel.model import WorldModel



@dataclass(frozen=True)
class ServiceConfig:
    """How a served model plans: by default ``PlanConfig``'s and CEM's own defaults (one place each)."""

    planner: str = DEFAULT_PLANNER
    """'cem', 'mppi', 'gradient' or 'shooting'."""
    plan: PlanConfig = PlanConfig()
    """Planner settings shared by every planner."""
    settings: dict[str, Any] | None = None
    """The planner's own settings (``make_planner``); absent fields (or None) keep its config's defaults."""

    @property
    def planner_settings(self) -> dict[str, Any]:
        """The planner's own settings, resolved: every field of its config, defaults filled in."""
        return resolved_settings(self.planner, self.settings)

    def to_dict(self) -> dict[str, Any]:
        return {"planner": self.planner, "plan": dataclasses.asdict(self.plan), "settings": self.planner_settings}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServiceConfig":
        """From ``to_dict``'s form; missing keys keep their defaults, unknown keys are an error."""
        unknown = sorted(set(data) - {"planner", "plan", "settings"})
        if unknown:
            raise ValueError(f"unknown planner service setting(s) {unknown}; known: planner, plan, settings")
        plan = cls.plan if "plan" not in data else config_from_dict(PlanConfig, {**dataclasses.asdict(cls.plan),
                                                                                  **data["plan"]})
        settings = data.get("settings")
        return cls(planner=data.get("planner", cls.planner), plan=plan,
                   settings=None if settings is None else dict(settings))


@dataclass(frozen=True)
class PlanBatch:
    """One served planner call's answer for N agents, numpy throughout (what crosses to the ingress).

    Attributes:
        actions: (N, A) the actions to take now.
        warm_start: (N, H, A) the chosen plans shifted by one step: the next call's warm starts.
        trajectory: (N, H+1, S) predicted mean states along the chosen plans, starting at obs.
        disagreement: (N,) mean ensemble disagreement along each chosen plan.
        fallback_reason: (N,) int8 ``planners.base.Fallback`` codes (0 where the plan acted).
        expected_return: (N,) predicted return of each chosen plan.
        hidden: (N, Hd) recurrent models' states after this step's observation and action, else None.
        iterations: optimisation rounds completed (the fewest over the objective kinds planned).
        elapsed_ms: wall time of the call.
        model_version: the version that planned.
    """

    actions: np.ndarray
    warm_start: np.ndarray
    trajectory: np.ndarray
    disagreement: np.ndarray
    fallback_reason: np.ndarray
    expected_return: np.ndarray
    hidden: np.ndarray | None
    iterations: int
    elapsed_ms: float
    model_version: str

    @property
    def fallback(self) -> np.ndarray:
        """(N,) True where the fallback policy acted."""
        return self.fallback_reason != Fallback.NONE

    def reasons(self) -> list[str | None]:
        """Per agent, why the fallback acted: 'deadline', 'uncertainty', 'error', or None."""
        return [Fallback(int(code)).reason for code in self.fallback_reason]


class FleetPlanner:
    """Plans batches of agents with one world model version.

    Args:
        model: the world model (on the device to plan on).
        cfg: planner settings.
    """

    def __init__(self, model: WorldModel, cfg: ServiceConfig | None = None) -> None:
        self.model, self.cfg = model, cfg or ServiceConfig()
        self.zones = model.spec.env_id == NAV2D_ID
        self.recurrent = is_recurrent(model.dynamics)
        """A GRU model: each agent's hidden state comes in with its request and goes back updated."""
        objectives = OBJECTIVES if self.zones else ("learned",)
        low, high = torch.tensor(model.spec.act_low), torch.tensor(model.spec.act_high)
        self.planners: dict[str, BasePlanner] = {
            name: make_planner(self.cfg.planner, model.dynamics,
                               build_objective(model, name, zones=self.zones),
                               low, high, self.cfg.plan, settings=self.cfg.planner_settings)
            for name in objectives}

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

    def describe(self) -> dict[str, Any]:
        """What is served: version, env and sizes, objectives, planner, device (JSON-friendly)."""
        spec = self.model.spec
        return {"model_version": self.version, "env_id": spec.env_id, "obs_dim": self.obs_dim,
                "act_dim": spec.act_dim, "objectives": list(self.objectives), "zones": self.zones,
                "planner": self.cfg.planner, "planner_settings": self.cfg.planner_settings, "horizon": self.horizon,
                "device": str(self.model.device)}

    def warmup(self, sizes: tuple[int, ...] = (1, 8, 64)) -> None:
        """Plan once untimed at a few batch sizes, so the budget has round-time estimates."""
        for n in sizes:
            for name in self.planners:
                self.plan(np.zeros((n, self.obs_dim), np.float32), objectives=[name] * n)

    @torch.no_grad()
    def plan(self, obs: np.ndarray, warm_start: np.ndarray | None = None, objectives: list[str] | None = None,
             zones: np.ndarray | None = None, budget_ms: float | None = None,
             hidden: np.ndarray | None = None) -> PlanBatch:
        """Plan for N agents.

        Args:
            obs: (N, S) current observations.
            warm_start: (N, H, A) warm starts (already shifted), NaN rows where an agent has none; any other
                shape (plans of another horizon or model) is ignored: every agent starts cold.
            objectives: per agent, one of ``self.objectives`` (default all 'learned').
            zones: (N, Z, 3) no-fly zones (x, y, radius; radius 0 pads), Nav2D only.
            budget_ms: hard time budget of the call (the config's when None).
            hidden: (N, Hd) recurrent models only: each agent's hidden state, NaN rows for a fresh one; any
                other shape (another model's states) is ignored: every agent starts fresh.

        Returns:
            the ``PlanBatch`` of the N agents, in order.
        """
        start = time.perf_counter()
        n, device = len(obs), self.model.device
        objectives = objectives or ["learned"] * n
        unknown = sorted(set(objectives) - set(self.planners))
        if unknown:
            raise ValueError(f"unknown objective {unknown[0]!r}; this model serves {', '.join(self.planners)}")
        obs_t = torch.as_tensor(np.asarray(obs, np.float32), device=device)
        if obs_t.dim() != 2 or obs_t.shape[1] != self.obs_dim:
            raise ValueError(f"obs must be (N, {self.obs_dim}), got {tuple(obs_t.shape)}")
        h, a = self.horizon, self.model.spec.act_dim
        if warm_start is not None and np.shape(warm_start) != (n, h, a):
            warm_start = None  # left by another horizon or model: no start for these plans
        out = {"actions": np.zeros((n, a), np.float32), "warm_start": np.zeros((n, h, a), np.float32),
               "trajectory": np.zeros((n, h + 1, self.obs_dim), np.float32),
               "disagreement": np.zeros(n, np.float32), "fallback_reason": np.zeros(n, np.int8),
               "expected_return": np.zeros(n, np.float32)}
        h_all = self._hidden(obs_t, hidden)  # (N, Hd) or None
        iterations = []
        names = np.asarray(objectives)
        for name, planner in self.planners.items():  # at most one call per objective kind
            rows = np.flatnonzero(names == name)
            if len(rows):
                iterations.append(self._plan_rows(planner, rows, obs_t, warm_start, zones, h_all, budget_ms, out))
        next_hidden = None
        if h_all is not None:  # the state after observing obs and taking the chosen action
            actions_t = torch.as_tensor(out["actions"], device=device)
            next_hidden = self.model.dynamics.step(h_all, obs_t, actions_t)[0].cpu().numpy()
        return PlanBatch(**out, hidden=next_hidden, iterations=min(iterations),
                         elapsed_ms=(time.perf_counter() - start) * 1000, model_version=self.version)

    def _plan_rows(self, planner: BasePlanner, rows: np.ndarray, obs: torch.Tensor, warm_start: np.ndarray | None,
                   zones: np.ndarray | None, hidden: torch.Tensor | None, budget_ms: float | None,
                   out: dict[str, np.ndarray]) -> int:
        """Plan the agents at ``rows`` (one objective kind) and fill their rows of ``out``; returns rounds run."""
        idx = torch.as_tensor(rows, device=obs.device)
        start_plan = planner.initial_plan(len(rows))
        if warm_start is not None:
            w = torch.as_tensor(np.asarray(warm_start, np.float32)[rows], device=obs.device)
            have = ~torch.isnan(w).any(-1).any(-1)  # (n,)
            start_plan = torch.where(have[:, None, None], w, start_plan)
        params = self._params(obs[idx], None if zones is None else zones[rows])
        if hidden is not None:
            params[HIDDEN] = hidden[idx]
        result = planner.plan(obs[idx], params, warm_start=start_plan, budget_ms=budget_ms)
        out["actions"][rows] = result.actions.cpu().numpy()
        out["warm_start"][rows] = shift_plan(result.plan).cpu().numpy()
        out["trajectory"][rows] = result.trajectory.cpu().numpy()
        out["disagreement"][rows] = result.disagreement.mean(1).cpu().numpy()
        out["fallback_reason"][rows] = result.fallback_reason.cpu().numpy()
        out["expected_return"][rows] = result.expected_return.cpu().numpy()
        return result.iterations

    def _hidden(self, obs: torch.Tensor, hidden: np.ndarray | None) -> torch.Tensor | None:
        if not self.recurrent:
            return None
        fresh = self.model.dynamics.initial_state(len(obs))  # (N, Hd)
        if hidden is None:
            return fresh
        h = torch.as_tensor(np.asarray(hidden, np.float32), device=obs.device)
        if h.shape != fresh.shape:  # left by another model: no state of this one
            return fresh
        return torch.where(torch.isnan(h).any(-1, keepdim=True), fresh, h)

    def _params(self, obs: torch.Tensor, zones: np.ndarray | None) -> dict[str, torch.Tensor]:
        if not self.zones:
            return {}
        z = np.zeros((len(obs), 1, 3), np.float32) if zones is None else np.asarray(zones, np.float32)
        return {GOAL: obs[:, GOAL_DIMS], ZONES: torch.as_tensor(z, device=obs.device)}

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
            mean = self.model.dynamics.step(self.model.dynamics.initial_state(len(o)), o, a)[1].mean[0]
        else:
            mean, _ = self.model.dynamics(o, a).moments()  # (B, S) ensemble mean
        return (mean - n).norm(dim=-1).cpu().numpy()
