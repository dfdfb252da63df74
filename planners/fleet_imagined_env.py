"""The fleet model as one gymnasium VectorEnv whose sub-envs are robots: a policy trained in it sees its neighbours.

F floors of N robots (``num_envs = F * N``; floor f holds rows f*N .. f*N + N - 1) are stepped jointly per
floor through the multi-agent model, all floors in one batched torch program per step: every neighbour
slot's action is gathered from that robot's own action this step (humans and empty slots act with zeros),
the floor's ensemble member (one per floor, drawn per episode: PETS' TS-1) predicts every robot's next
physical state, humans move at constant velocity, and every robot's observation is rebuilt from the joint
predicted positions by ``warehouse_features.observe_nearby``, the feature function of the planners'
rollouts (here over every agent and rectangle of the floor, so it is ``observe``'s answer). A robot's
observation carries its M nearest neighbours in its slots: that is how a policy over it sees them.

Episodes start from whole logged floor ticks (``FloorTicks``) and are truncated together after
``horizon`` steps, with gymnasium's NEXT_STEP autoreset as in ``planners.imagined_env.ImaginedEnv``: the
step after the truncation ignores the actions and returns the first observations of new episodes with
reward 0 and both flags False. Rewards are, per robot and step, ``WarehouseCosts``' terms as
``FleetRollout`` sums them (the planner's own objective): progress along the aisle distance field to the
robot's task, minus agent and shelf proximity costs. Tasks advance as the floor's do (a robot within
``TASK_RADIUS`` of its pick point goes on to a random station, from a station to a random pick), so
robots that arrive leave again rather than crowd their targets; a step is charged against the task held
during it.

Shapes: ``F`` floors, ``N`` robots per floor, ``U`` humans, ``O = N + U`` agents, ``G`` logged ticks,
``B`` logged rows, ``E`` members, ``M`` slots, ``S`` observation, ``P`` physical state, ``A`` action.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from planners.fleet_rollout import FleetDynamics, ts1_sample
from planners.warehouse_costs import WarehouseCosts
from worldmodel.dynamics import Prediction
from worldmodel.envs.warehouse import (ACTION_SPACE, DT, KIND_HUMAN, KIND_ROBOT, MAX_SPEED, NEIGHBOURS, OBS_DIM,
                                       POS_DIMS, ROBOT_RADIUS, TASK_DIMS, TASK_RADIUS, VEL_DIMS)
from worldmodel.envs.warehouse_features import Nearby, Sensed, first_sightings, observe_nearby, slot_agents

SAME_HUMAN_M = 0.01
"""Human sightings of one tick closer than this (metres) are one human seen by several robots."""
UNSEEN = -1000.0
"""Where padding humans stand: far off every floor, so no robot ever senses them."""
AISLE_DISTANCE = "aisle_distance"
"""The infos' key of each robot's aisle distance, after the step, to the task it held during it (metres:
what ``WarehouseCosts.progress`` weighs)."""
PROGRESS = "progress"
"""The infos' key of the aisle metres each robot gained this step towards the task it held (0 on reset)."""
_CHUNK_TICKS = 256
"""Ticks whose sightings are compared at once (bounds the (ticks, N*M, N*M) distances)."""


@dataclass(frozen=True)
class FloorTicks:
    """Whole logged floor ticks, where imagined episodes start: every robot's observation at one (scene, t).

    The humans are those the robots saw (their slots of kind human), each once; humans nobody saw do not
    exist in imagination. Ticks with fewer humans are padded with humans at ``UNSEEN``.
    """

    obs: torch.Tensor
    """(G, N, S) every robot's logged observation, in the logs' robot order."""
    humans_pos: torch.Tensor
    """(G, U, 2) the humans' positions."""
    humans_vel: torch.Tensor
    """(G, U, 2) their velocities."""

    def __post_init__(self) -> None:
        g, n, u = self.obs.shape[0], self.obs.shape[1], self.humans_pos.shape[1]
        if self.obs.shape != (g, n, OBS_DIM) or g < 1 or n < 1:
            raise ValueError(f"obs must be (G, N, {OBS_DIM}) with G, N >= 1, got {tuple(self.obs.shape)}")
        if self.humans_pos.shape != (g, u, 2) or self.humans_vel.shape != (g, u, 2):
            raise ValueError(f"humans_pos and humans_vel must be (G, U, 2) with G = {g}, got "
                             f"{tuple(self.humans_pos.shape)} and {tuple(self.humans_vel.shape)}")

    @property
    def robots(self) -> int:
        """N."""
        return self.obs.shape[1]

    @classmethod
    def from_rows(cls, obs: np.ndarray, scene: np.ndarray, t: np.ndarray) -> "FloorTicks":
        """The complete ticks of logged rows: obs (B, S), scene (B,) str, t (B,) int.

        A tick is complete when it has as many rows as the fullest tick (N); the others (a subset of a
        floor's logs) are dropped. Raises ValueError when no row names a scene (lone-agent logs).
        """
        obs, scene = np.asarray(obs, np.float32), np.asarray(scene).astype(str)
        if obs.ndim != 2 or obs.shape[1] != OBS_DIM or len(obs) != len(scene) or len(obs) != len(t):
            raise ValueError(f"obs must be (B, {OBS_DIM}) with scene and t (B,), got {obs.shape}, "
                             f"{np.shape(scene)} and {np.shape(t)}")
        named = scene != ""
        if not named.any():
            raise ValueError("no logged row names a scene: floor ticks need fleet logs (Warehouse-v1 floors)")
        obs, scene, t = obs[named], scene[named], np.asarray(t, np.int64)[named]
        _, scene_id = np.unique(scene, return_inverse=True)
        _, tick = np.unique(scene_id * (int(t.max()) + 1) + t, return_inverse=True)  # (B,)
        counts = np.bincount(tick)
        full = counts == counts.max()
        keep = full[tick]
        order = np.argsort(tick[keep], kind="stable")  # rows of a tick stay in the logs' robot order
        ticks = torch.from_numpy(obs[keep][order].reshape(int(full.sum()), int(counts.max()), OBS_DIM))
        return cls(ticks, *_humans(ticks))


def _humans(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each tick's humans, each once, from the robots' slots: (G, N, S) -> positions and velocities (G, U, 2)."""
    g = obs.shape[0]
    pos, vel, kind = (x.flatten(1, 2) for x in slot_agents(obs))  # (G, N*M, 2), (G, N*M, 2), (G, N*M)
    human = kind == KIND_HUMAN
    first = torch.zeros_like(human)
    for lo in range(0, g, _CHUNK_TICKS):  # chunks of ticks bound the pair distances, not a loop over robots
        chunk = slice(lo, lo + _CHUNK_TICKS)
        first[chunk] = first_sightings(pos[chunk], human[chunk], SAME_HUMAN_M)
    u = int(first.sum(1).max()) if g else 0
    order = torch.argsort((~first).to(torch.int8), dim=1, stable=True)[:, :u]  # (G, U) the kept sightings first
    kept = first.gather(1, order)[..., None]
    pos = torch.where(kept, pos.gather(1, order[..., None].expand(-1, -1, 2)), UNSEEN)
    vel = torch.where(kept, vel.gather(1, order[..., None].expand(-1, -1, 2)), 0.0)
    return pos, vel


class FleetImaginedEnv(gym.vector.VectorEnv):
    """F imagined floors of N robots as F * N sub-envs; see the module docstring for the semantics.

    ``infos`` (reset and step) carry per robot ``is_success`` (reached its task point this step) and
    ``violation`` (a predicted contact with an agent or a shelf or wall), (F * N,) bool each, and
    ``AISLE_DISTANCE`` and ``PROGRESS`` (F * N,) float32, with the ``_key`` masks gymnasium's
    ``DictInfoToList`` reads.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, dynamics: FleetDynamics, costs: WarehouseCosts, starts: FloorTicks, floors: int,
                 horizon: int = 64, seed: int = 0, uncertainty_penalty: float = 0.0) -> None:
        """Args:
            dynamics: the multi-agent model (``FleetEnsemble``'s signature; ``ExactFleetModel`` for a known answer).
            costs: the floor's costs; its layout must be the logged floor's (its device is used).
            starts: the logged ticks episodes start from.
            floors: F, floors stepped at once.
            horizon: T, steps before every floor is truncated.
            seed: seeds starts, members and dynamics noise (``reset(seed=...)`` reseeds).
            uncertainty_penalty: each robot's reward loses this times the members' disagreement on its
                next physical state (MOPO's penalty).
        """
        for name, value in (("floors", floors), ("horizon", horizon)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not uncertainty_penalty >= 0:
            raise ValueError(f"uncertainty_penalty must be >= 0, got {uncertainty_penalty}")
        device = costs.rects.device
        self.dynamics, self.costs, self.members = dynamics, costs, int(dynamics.members)
        self.floors, self.robots, self.horizon = int(floors), starts.robots, int(horizon)
        self.uncertainty_penalty = float(uncertainty_penalty)
        self.starts = FloorTicks(*(x.to(device) for x in (starts.obs, starts.humans_pos, starts.humans_vel)))
        self.num_envs = self.floors * self.robots
        u = starts.humans_pos.shape[1]
        self._kinds = torch.tensor([KIND_ROBOT] * self.robots + [KIND_HUMAN] * u, device=device)  # (O,)
        o, r = self.robots + u, len(costs.rects)
        # Every agent and rectangle of the floor: observe_nearby is then observe's answer for every robot.
        self._near = Nearby(torch.arange(o, device=device).expand(self.robots, o),
                            costs.rects.expand(self.robots, r, 4))
        self._box = torch.tensor([costs.layout.width, costs.layout.height], device=device)
        self._picks = torch.tensor(costs.layout.picks, dtype=torch.float32, device=device)  # (Tp, 2)
        self._stations = torch.tensor(costs.layout.stations, dtype=torch.float32, device=device)  # (Ts, 2)
        self._pick_fields, self._station_fields = costs.targets(self._picks), costs.targets(self._stations)
        self.single_observation_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        self.single_action_space = ACTION_SPACE
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._gen = torch.Generator(device=device).manual_seed(seed)
        self._t, self._autoreset, self._ready = 0, False, False

    @property
    def positions(self) -> torch.Tensor:
        """(F, N, 2) a copy of every robot's position now."""
        return self._pos.clone()

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Start new episodes on every floor; ``seed`` (an int) reseeds everything drawn."""
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        if options:
            raise ValueError(f"FleetImaginedEnv takes no reset options, got {sorted(options)}")
        super().reset(seed=seed)
        if seed is not None:
            self._gen.manual_seed(int(seed))
        self._new_episodes()
        self._ready = True
        return self._observations(), self._infos()

    @torch.no_grad()
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every floor by its robots' actions (F * N, A), clipped into [-1, 1].

        Returns:
            observations (F * N, S) float32, rewards (F * N,) float32, terminated (never) and truncated
            (every robot at once after ``horizon`` steps) (F * N,) bool, infos.
        """
        if not self._ready:
            raise RuntimeError("call reset() before step()")
        act = torch.as_tensor(np.asarray(actions), dtype=torch.float32, device=self._box.device)
        if act.shape != (self.num_envs, 2) or not torch.isfinite(act).all():
            raise ValueError(f"actions must be finite, shaped (F * N, A) = ({self.num_envs}, 2), got shape "
                             f"{tuple(act.shape)}")
        no = np.zeros(self.num_envs, bool)
        if self._autoreset:  # every floor ended on the previous step: new episodes, the actions ignored
            self._new_episodes()
            return self._observations(), np.zeros(self.num_envs, np.float32), no, no.copy(), self._infos()
        act = act.clamp(-1.0, 1.0).view(self.floors, self.robots, 2)  # (F, N, A)
        nxt, disagreement = self._predict(act)  # (F, N, P), (F, N)
        self._t += 1
        self._pos, self._vel = nxt[..., :2], nxt[..., 2:4]
        self._sensed = self._sense()
        reward = self.rewards() - self.uncertainty_penalty * disagreement  # (F, N)
        after = self.costs.fields.lookup(self._pos, self._target)  # (F, N) to the task held this step
        self._progress, self._aisle = self._from - after, after
        self._arrived = torch.linalg.vector_norm(self._pos - self._task, dim=-1) <= TASK_RADIUS
        self._advance_tasks(self._arrived)
        self._from = self.costs.fields.lookup(self._pos, self._target)  # (F, N) to the task now held
        self._autoreset = self._t >= self.horizon
        return (self._observations(), reward.flatten().cpu().numpy().astype(np.float32), no,
                np.full(self.num_envs, self._autoreset), self._infos())

    def rewards(self) -> torch.Tensor:
        """(F, N) each robot's reward for arriving where it is now: the rollout's per-step return."""
        s = self._sensed
        return (self.costs.progress(self._pos, self._target) + self.costs.shelf_gaps(s.rect_gap)
                + self.costs.agents(s.others_dist))

    def feature_stats(self, samples: int = 4096, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std ((S,), (S,)) of up to ``samples`` logged starts: ``PolicyNet.set_normalisation``'s input."""
        rows = self.starts.obs.flatten(0, 1)  # (G*N, S)
        gen = torch.Generator(device=rows.device).manual_seed(seed)
        pick = torch.randperm(len(rows), generator=gen, device=rows.device)[:samples]
        return rows[pick].mean(0).cpu(), rows[pick].std(0).nan_to_num(0.0).cpu()

    def _new_episodes(self) -> None:
        """Every floor starts from a logged tick drawn anew, with a member drawn anew."""
        device = self._box.device
        tick = torch.randint(len(self.starts.obs), (self.floors,), generator=self._gen, device=device)  # (F,)
        obs = self.starts.obs[tick]  # (F, N, S)
        self._pos, self._vel, self._task = obs[..., POS_DIMS], obs[..., VEL_DIMS], obs[..., TASK_DIMS]
        self._humans_pos, self._humans_vel = self.starts.humans_pos[tick], self.starts.humans_vel[tick]  # (F, U, 2)
        self._target = self.costs.targets(self._task.reshape(-1, 2)).view(self.floors, self.robots)  # (F, N)
        self._member = torch.randint(self.members, (self.floors,), generator=self._gen, device=device)  # (F,)
        at_station = (self._task[..., None, :] - self._stations).abs().amax(-1) < 1e-3  # (F, N, Ts)
        self._stage = at_station.any(-1)  # (F, N) True: heading to a station
        self._aisle = self._from = self.costs.fields.lookup(self._pos, self._target)  # (F, N)
        self._progress, self._arrived = torch.zeros_like(self._aisle), torch.zeros_like(self._stage)
        self._t, self._autoreset = 0, False
        self._sensed = self._sense()

    def _advance_tasks(self, arrived: torch.Tensor) -> None:
        """Robots in ``arrived`` (F, N) go on: from a pick point to a random station, from a station to a
        random pick (drawn for every robot, so the stream does not depend on who arrived)."""
        shape, device = arrived.shape, arrived.device
        station = torch.randint(len(self._stations), shape, generator=self._gen, device=device)  # (F, N)
        pick = torch.randint(len(self._picks), shape, generator=self._gen, device=device)
        to_station, to_pick = arrived & ~self._stage, arrived & self._stage
        self._task = torch.where(to_station[..., None], self._stations[station],
                                 torch.where(to_pick[..., None], self._picks[pick], self._task))  # (F, N, 2)
        self._target = torch.where(to_station, self._station_fields[station],
                                   torch.where(to_pick, self._pick_fields[pick], self._target))  # (F, N)
        self._stage = self._stage ^ arrived
        obs = self._sensed.obs.clone()
        obs[..., TASK_DIMS] = self._task  # the new task is all that changes in the observation
        self._sensed = replace(self._sensed, obs=obs)

    def _sense(self) -> Sensed:
        """Every robot's observation and clearances from the joint positions and the humans at step t."""
        humans = self._humans_pos + self._humans_vel * (self._t * DT)
        return observe_nearby(self._pos, self._vel, self._task, torch.cat([self._pos, humans], 1),
                              torch.cat([self._vel, self._humans_vel], 1), self._kinds, self._near)

    def _predict(self, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each robot's next physical state drawn from its floor's member, and the members' disagreement on
        it: (F, N, A) -> ((F, N, P), (F, N))."""
        f, n, a = act.shape
        sensed, o = self._sensed, self._kinds.shape[0]
        slot = torch.where(sensed.slot_index < 0, o, sensed.slot_index).flatten(1)  # (F, N*M)
        others = torch.cat([act, act.new_zeros(f, o - n + 1, a)], 1)  # (F, O + 1, A): humans and empty slots 0
        neighbours = others.gather(1, slot[..., None].expand(-1, -1, a))  # (F, N*M, A)
        pred = self.dynamics(sensed.obs.reshape(f * n, OBS_DIM), act.reshape(f * n, a),
                             neighbours.view(f * n, NEIGHBOURS, a))  # (E, F*N, P)
        rows = torch.arange(f * n, device=act.device)
        member = self._member.repeat_interleave(n)  # (F*N,) each robot's floor's member
        own = Prediction(pred.mean[member, rows][None], pred.var[member, rows][None], pred.scale)
        noise = torch.randn(own.mean.shape, generator=self._gen, device=act.device)
        nxt = ts1_sample(own, noise)[0].view(f, n, -1)  # (F, N, P)
        disagreement = torch.linalg.vector_norm(pred.mean.std(0, unbiased=False), dim=-1).view(f, n)
        # The floor's bounds and speed limit hold in imagination too; a diverging robot keeps its state.
        pos, vel = torch.minimum(torch.maximum(nxt[..., :2], torch.zeros_like(self._box)), self._box), nxt[..., 2:4]
        vel = vel * (MAX_SPEED / torch.linalg.vector_norm(vel, dim=-1, keepdim=True).clamp_min(MAX_SPEED))
        nxt = torch.cat([pos, vel], -1)
        ok = torch.isfinite(nxt).all(-1, keepdim=True)
        return torch.where(ok, nxt, torch.cat([self._pos, self._vel], -1)), torch.where(ok[..., 0], disagreement, 0.0)

    def _observations(self) -> np.ndarray:
        """(F * N, S) float32 every robot's observation."""
        return self._sensed.obs.reshape(self.num_envs, OBS_DIM).cpu().numpy().astype(np.float32)

    def _infos(self) -> dict[str, Any]:
        s = self._sensed
        contact = (s.others_dist < 2 * ROBOT_RADIUS).any(-1) | (s.rect_gap < ROBOT_RADIUS).any(-1)
        flat = lambda x: x.flatten().cpu().numpy()  # noqa: E731
        every = np.ones(self.num_envs, bool)
        return {"is_success": flat(self._arrived), "_is_success": every, "violation": flat(contact),
                "_violation": every.copy(), AISLE_DISTANCE: flat(self._aisle).astype(np.float32),
                f"_{AISLE_DISTANCE}": every.copy(), PROGRESS: flat(self._progress).astype(np.float32),
                f"_{PROGRESS}": every.copy()}
