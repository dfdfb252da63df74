"""The world model as a batched gymnasium vector env, for training a policy on imagined rollouts.

Every env steps through one ensemble member's sampled Gaussian, the member drawn per episode
(PETS' TS-1), so the policy meets the model's disagreement rather than its average. Rewards are the
planners' own objective (``planners.evaluate.build_objective``), so the policy optimises what the
planner does. All envs step in one batched torch program; observations are the policy's raw
features (``planners.policy.policy_features``), so the policy sees each episode's goal and zones.

Autoreset is gymnasium's NEXT_STEP mode, the one RLlib's ``SingleAgentEnvRunner`` expects of a
``VECTOR_ENTRY_POINT`` env: after an env reports terminated or truncated, its next ``step`` ignores
its action and returns the first observation of a new episode with reward 0 and both flags False
(the runner starts a fresh episode object on done and feeds it that observation as its reset).

Shapes: ``N`` envs, ``B0`` logged starts, ``S`` state, ``A`` action, ``Z`` zone slots, ``F`` features.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from planners.evaluate import build_objective
from planners.objectives import GOAL, ZONES, Params
from planners.policy import POLICY_ZONES, feature_dim, policy_features
from worldmodel.envs import NAV2D_ID
from worldmodel.envs.nav2d import GOAL_DIMS, MIN_GOAL_DISTANCE, POS_DIMS, ZONE_SEGMENT, Nav2DEnv
from worldmodel.model import WorldModel
from worldmodel.recurrent import RecurrentDynamics

ZONE_RADIUS = (0.5, 1.5)
"""Radius range of the drawn no-fly zones: varied sizes, so the policy learns from the radius input."""
_CANDIDATES = 64
"""Rejection sampling draws this many candidate points per env at once (no loop that may not end)."""


class ImaginedEnv(gym.vector.VectorEnv):
    """N episodes rolled through a world model at once; see the module docstring for the semantics.

    ``infos`` (from reset and step) carry ``is_success`` (N,) bool (Nav2D: the goal was reached) and
    ``violation`` (N,) bool (the new position is strictly inside a no-fly zone), each with the
    ``_key`` mask gymnasium's ``DictInfoToList`` reads.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, model: WorldModel, starts: np.ndarray, num_envs: int, objective: str | None = None,
                 zones: tuple[int, int] | None = None, horizon: int = 200, seed: int = 0,
                 uncertainty_penalty: float = 0.0) -> None:
        """Args:
            model: the world model (its device is used); an MLP ensemble or MLP dynamics model.
            starts: (B0, S) observations episodes start from, drawn uniformly: logged ones, possibly with
                the real env's first observations (Nav2D: goals are redrawn).
            num_envs: N, episodes stepped at once.
            objective: 'goal' (Nav2D's reward) or 'learned' (the model's reward model); default
                'goal' for Nav2D, else 'learned'.
            zones: (least, most) no-fly zones drawn per episode, Nav2D only; default (0, POLICY_ZONES).
            horizon: steps before an episode is truncated.
            seed: seeds starts, goals, zones, members and dynamics noise (``reset(seed=...)`` reseeds).
            uncertainty_penalty: each step's reward loses this times the members' disagreement on the
                next state (the norm of the std of their means, MOPO's penalty), so a policy does not
                learn to exploit where the model is unsure.
        """
        if uncertainty_penalty < 0:
            raise ValueError(f"uncertainty_penalty must be >= 0, got {uncertainty_penalty}")
        if isinstance(model.dynamics, RecurrentDynamics):
            raise ValueError("ImaginedEnv steps MLP dynamics models; a GRU model needs its hidden state carried")
        self.nav = model.spec.env_id == NAV2D_ID
        zones = zones if zones is not None else ((0, POLICY_ZONES) if self.nav else (0, 0))
        _check_args(model, starts, num_envs, zones, horizon, self.nav)
        self.model, self.num_envs, self.horizon, self.zone_counts = model, int(num_envs), int(horizon), zones
        self.uncertainty_penalty = float(uncertainty_penalty)
        self.objective_name = objective or ("goal" if self.nav else "learned")
        self.objective = build_objective(model, self.objective_name, zones=self.nav).prepared()
        # Whether observations carry zone features: the ``zones`` flag of the PolicyNet trained on them.
        self.zoned = self.nav
        device, s = model.device, model.spec.obs_dim
        self.starts = torch.as_tensor(np.asarray(starts), dtype=torch.float32, device=device)
        self.low = torch.tensor(model.spec.act_low, dtype=torch.float32, device=device)
        self.high = torch.tensor(model.spec.act_high, dtype=torch.float32, device=device)
        self.members = int(getattr(model.dynamics, "members", 1))
        layout = Nav2DEnv()  # the real env's defaults: spawn box and goal radius
        self.spawn, self.goal_radius = layout.spawn, layout.goal_radius

        self.single_observation_space = spaces.Box(-np.inf, np.inf, (feature_dim(s, self.zoned),), np.float32)
        self.single_action_space = spaces.Box(np.asarray(model.spec.act_low, np.float32),
                                              np.asarray(model.spec.act_high, np.float32), dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

        n = self.num_envs
        self._gen = torch.Generator(device=device).manual_seed(seed)
        self._state = torch.zeros(n, s, device=device)  # (N, S) the model's current state per env
        self._goal = torch.zeros(n, 2, device=device)  # (N, 2) Nav2D goals
        self._zones = torch.zeros(n, max(zones[1], 1), 3, device=device)  # (N, Z, 3) radius 0 pads
        self._member = torch.zeros(n, dtype=torch.long, device=device)  # (N,) the episode's member
        self._t = torch.zeros(n, dtype=torch.long, device=device)  # (N,) steps into the episode
        self._autoreset = torch.zeros(n, dtype=torch.bool, device=device)  # (N,) ended on the last step
        self._ready = False

    @property
    def states(self) -> torch.Tensor:
        """(N, S) a copy of the model states the observations were made from."""
        return self._state.clone()

    @property
    def params(self) -> Params:
        """The objective's per-env parameters: Nav2D's goals (N, 2) and zones (N, Z, 3); {} otherwise."""
        return {GOAL: self._goal.clone(), ZONES: self._zones.clone()} if self.nav else {}

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode in every env; ``seed`` (an int) reseeds everything drawn."""
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if options:
            raise ValueError(f"ImaginedEnv takes no reset options, got {sorted(options)}")
        super().reset(seed=seed)
        if seed is not None:
            self._gen.manual_seed(int(seed))
        everyone = torch.ones(self.num_envs, dtype=torch.bool, device=self._state.device)
        self._new_episodes(everyone)
        self._autoreset.zero_()
        self._ready = True
        no = np.zeros(self.num_envs, bool)
        return self._observations(), _infos(no, no)

    @torch.no_grad()
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env by its action (N, A), clipped into the model's action box.

        Returns:
            observations (N, F) float32, rewards (N,) float32, terminated (N,) bool, truncated (N,)
            bool, infos (``is_success``, ``violation``: (N,) bool).
        """
        if not self._ready:
            raise RuntimeError("call reset() before step()")
        act = torch.as_tensor(np.asarray(actions), dtype=torch.float32, device=self._state.device)
        if act.shape != (self.num_envs, len(self.low)) or not torch.isfinite(act).all():
            raise ValueError(f"actions must be finite, shaped (N, A) = ({self.num_envs}, {len(self.low)}), "
                             f"got shape {tuple(act.shape)}")
        act = torch.minimum(torch.maximum(act, self.low), self.high)
        # Imagine the transition of every env, as if none were resetting (one batched program).
        new, disagreement = self._predict(self._state, act)  # (N, S), (N,)
        params = self.params
        reward = self.objective(self._state[None, :, None], act[None, :, None], new[None, :, None],
                                params)[0, :, 0] - self.uncertainty_penalty * disagreement  # (N,)
        success, terminated = self._terminal(self._state, act, new)
        violation = self._inside_zone(new)
        # A diverging model ends the episode where it was, rather than feed NaNs to the learner.
        broken = ~(torch.isfinite(new).all(-1) & torch.isfinite(reward))
        new, reward = torch.where(broken[:, None], self._state, new), torch.where(broken, 0.0, reward)
        self._state, self._t = new, self._t + 1
        truncated = ((self._t >= self.horizon) | broken) & ~terminated
        # Next-step autoreset: envs that ended on the previous step start over; their action was ignored.
        reset = self._autoreset
        self._new_episodes(reset)
        keep = ~reset
        reward, success, violation = reward * keep, success & keep, violation & keep
        terminated, truncated = terminated & keep, truncated & keep
        self._autoreset = terminated | truncated
        return (self._observations(), reward.cpu().numpy().astype(np.float32), terminated.cpu().numpy(),
                truncated.cpu().numpy(), _infos(success.cpu().numpy(), violation.cpu().numpy()))

    def feature_stats(self, samples: int = 4096, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the features of ``samples`` fresh episodes' first observations: ((F,), (F,)).

        What ``PolicyNet.set_normalisation`` wants; drawn with its own generator, so the env's
        episodes are unchanged.
        """
        gen = torch.Generator(device=self._state.device).manual_seed(seed)
        state, params = self._draw_episodes(samples, gen)
        feats = policy_features(state, params, self.zoned)
        return feats.mean(0).cpu(), feats.std(0).cpu()

    def _new_episodes(self, mask: torch.Tensor) -> None:
        """Draw a start, goal, zones and member for the envs in ``mask`` (N,) bool."""
        k = int(mask.sum())
        if k == 0:
            return
        state, params = self._draw_episodes(k, self._gen)
        self._state[mask], self._t[mask] = state, 0
        self._member[mask] = torch.randint(self.members, (k,), generator=self._gen, device=self._gen.device)
        if self.nav:
            self._goal[mask], self._zones[mask] = params[GOAL], params[ZONES]

    def _draw_episodes(self, k: int, gen: torch.Generator) -> tuple[torch.Tensor, Params]:
        """k first states (k, S) and their params: logged starts, with Nav2D goals and zones drawn."""
        start = self.starts[torch.randint(len(self.starts), (k,), generator=gen, device=gen.device)].clone()
        if not self.nav:
            return start, {}
        goal, zones = self._draw_task(start[:, POS_DIMS], gen)
        start[:, GOAL_DIMS] = goal
        return start, {GOAL: goal, ZONES: zones}

    def _draw_task(self, pos: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Goals (k, 2) and zones (k, Z, 3) for starts at ``pos`` (k, 2), drawn as Nav2D draws them.

        Each zone keeps radius + goal_radius away from start and goal; the first sits on the
        start-goal segment (the goal is drawn far enough for it to fit), the rest anywhere in the
        spawn box; a zone that finds no valid centre among the candidates is dropped (radius 0).
        """
        k, slots, lo, hi = len(pos), self._zones.shape[1], *self.zone_counts
        rand = lambda *shape: torch.rand(shape, generator=gen, device=gen.device)  # noqa: E731
        count = torch.randint(lo, hi + 1, (k, 1), generator=gen, device=gen.device)
        radius = (ZONE_RADIUS[0] + (ZONE_RADIUS[1] - ZONE_RADIUS[0]) * rand(k, slots))
        radius = radius * (torch.arange(slots, device=pos.device) < count)  # (k, Z), 0 beyond the count
        clearance = radius + self.goal_radius  # (k, Z)
        # Goal: uniform in the spawn box, at least twice the first zone's clearance from the start.
        far = torch.clamp(2 * clearance[:, 0], min=MIN_GOAL_DISTANCE)  # (k,)
        goals = self.spawn * (2 * rand(k, _CANDIDATES, 2) - 1)  # (k, C, 2)
        dist = torch.linalg.vector_norm(goals - pos[:, None], dim=-1)  # (k, C)
        pick = torch.where((dist >= far[:, None]).any(1), (dist >= far[:, None]).int().argmax(1), dist.argmax(1))
        goal = goals[torch.arange(k, device=pos.device), pick]  # (k, 2)
        # First zone: a fraction of the way along the segment that keeps its clearance at both ends.
        d = torch.linalg.vector_norm(goal - pos, dim=-1).clamp_min(1e-6)
        u_lo = torch.clamp(clearance[:, 0] / d, min=ZONE_SEGMENT[0])
        u_hi = torch.clamp(1 - clearance[:, 0] / d, max=ZONE_SEGMENT[1])
        first = pos + (u_lo + (u_hi - u_lo) * rand(k))[:, None] * (goal - pos)  # (k, 2)
        # Other zones: the first of C candidates in the spawn box clear of start and goal.
        cand = self.spawn * (2 * rand(k, slots, _CANDIDATES, 2) - 1)  # (k, Z, C, 2)
        clear = clearance[:, :, None]
        valid = ((torch.linalg.vector_norm(cand - pos[:, None, None], dim=-1) >= clear)
                 & (torch.linalg.vector_norm(cand - goal[:, None, None], dim=-1) >= clear))  # (k, Z, C)
        centres = cand.gather(2, valid.int().argmax(2)[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]
        centres[:, 0] = first  # (k, Z, 2)
        found = valid.any(2)  # (k, Z)
        found[:, 0] = u_lo <= u_hi
        radius = radius * found
        zones = torch.cat([centres, radius[..., None]], -1) * (radius > 0)[..., None]  # pads all zero
        return goal, zones

    def _predict(self, state: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A draw of each env's next state from its episode's member, and the members' disagreement on it:
        (N, S), (N, A) -> ((N, S), (N,))."""
        pred = self.model.dynamics(state, act)  # mean, var: (E, N, S)
        rows = torch.arange(len(state), device=state.device)
        mean, var = pred.mean[self._member, rows], pred.var[self._member, rows] * pred.scale  # (N, S)
        noise = torch.randn(mean.shape, generator=self._gen, device=self._gen.device, dtype=mean.dtype)
        new = mean + var.clamp_min(0).sqrt() * noise
        if self.nav:  # the goal is the task's, not the dynamics': keep it exact
            new[:, GOAL_DIMS] = self._goal
        return new, torch.linalg.vector_norm(pred.mean.std(0, unbiased=False), dim=-1)

    def _terminal(self, state: torch.Tensor, act: torch.Tensor,
                  new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(success, terminated), each (N,) bool: Nav2D's goal reached, else the learned termination."""
        if self.nav:
            reached = torch.linalg.vector_norm(new[:, POS_DIMS] - self._goal, dim=-1) <= self.goal_radius
            return reached, reached
        never = torch.zeros(len(state), dtype=torch.bool, device=state.device)
        if self.model.termination is None:
            return never, never
        return never, self.model.termination(state, act, new).mean(0) > 0.5

    def _inside_zone(self, state: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the position is strictly inside one of the env's zones (Nav2D), else False."""
        if not self.nav:
            return torch.zeros(len(state), dtype=torch.bool, device=state.device)
        dist = torch.linalg.vector_norm(state[:, None, POS_DIMS] - self._zones[..., :2], dim=-1)  # (N, Z)
        return (dist < self._zones[..., 2]).any(1)

    def _observations(self) -> np.ndarray:
        """(N, F) float32: the policy's raw features of the current states and zones."""
        return policy_features(self._state, self.params, self.zoned).cpu().numpy().astype(np.float32)


def _infos(success: np.ndarray, violation: np.ndarray) -> dict[str, Any]:
    every = np.ones(len(success), bool)
    return {"is_success": success, "_is_success": every, "violation": violation, "_violation": every.copy()}


def _check_args(model: WorldModel, starts: np.ndarray, num_envs: int, zones: tuple[int, int],
                horizon: int, nav: bool) -> None:
    s = model.spec.obs_dim
    shape = np.shape(starts)
    if len(shape) != 2 or shape[0] < 1 or shape[1] != s or not np.all(np.isfinite(starts)):
        raise ValueError(f"starts must be (B0, S) finite logged observations with B0 >= 1, S = {s}; got shape {shape}")
    if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
        raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
    if len(zones) != 2 or not 0 <= zones[0] <= zones[1]:
        raise ValueError(f"zones must be (least, most) with 0 <= least <= most, got {zones!r}")
    if zones[1] > 0 and not nav:
        raise ValueError(f"no-fly zones exist in {NAV2D_ID} only, not {model.spec.env_id}; pass zones=(0, 0)")
