"""Collect whole episodes from N copies of an environment stepped in lockstep.

This is the first data a world model trains on, so it must be exact: every row is a real
transition ``obs --action--> new_obs``, the last row of an episode carries the episode's true
final observation, and the same seed gives the same episodes. Envs that observe camera frames
(alone or in a ``Dict`` with a vector) give ``ImageTransitions``: the frames beside the vector rows.

Dimensions: ``N`` env copies, ``S`` observation (vector part) size, ``A`` action size, ``B`` transitions,
``H, W, C`` frame shape.
"""

from __future__ import annotations

import datetime
import functools
import sys
from typing import Any, Callable, Union

import gymnasium
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from tqdm import tqdm

from worldmodel.data.batch import UNKNOWN, Transitions
from worldmodel.data.images import NEW_OBS_IMAGE, OBS_IMAGE, ImageTransitions
from worldmodel.envs import IMAGE_KEY, PROPRIO_KEY, make_env

VIOLATION_INFO = "violation"
"""The info key under which an env reports its constraint test at the new state (Nav2D's no-fly zones)."""

Observation = Union[np.ndarray, dict[str, np.ndarray]]
"""A batch of N observations: (N, S) vectors, (N, H, W, C) frames, or a dict of both by key."""
Policy = Callable[[Observation], np.ndarray]
"""Maps observations of N copies to actions (N, A)."""


def _random_policy(env_id: str, space: gymnasium.spaces.Box, rng: np.random.Generator) -> Policy:
    """Actions uniform in the action box."""
    low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ValueError(f"policy 'random' needs a bounded action space; env {env_id} has {space}")

    def act(obs: Observation) -> np.ndarray:
        n = len(obs[IMAGE_KEY]) if isinstance(obs, dict) else len(obs)
        return rng.uniform(low, high, size=(n, low.size)).astype(np.float32)

    return act


HELD_STEPS = 5
"""Mean steps policy 'held' keeps an action."""


def _held_policy(env_id: str, space: gymnasium.spaces.Box, rng: np.random.Generator) -> Policy:
    """Random play that reaches speed: actions uniform in the action box, each copy keeping its last action
    with probability ``1 - 1 / HELD_STEPS`` per step (held for ``HELD_STEPS`` steps on average). Independent
    draws every step average out: a Nav2D agent then crawls (speed std ~0.45 of its 3.0), far below the speeds
    a planner drives at, which a model must have seen to predict them."""
    draw = _random_policy(env_id, space, rng)
    last: np.ndarray | None = None

    def act(obs: Observation) -> np.ndarray:
        nonlocal last
        fresh = draw(obs)
        if last is None or len(last) != len(fresh):
            last = fresh
        else:
            last = np.where(rng.random((len(fresh), 1)) < 1 / HELD_STEPS, fresh, last)
        return last

    return act


_POLICIES: dict[str, Callable[[str, gymnasium.spaces.Box, np.random.Generator], Policy]] = {
    "random": _random_policy,
    "held": _held_policy,
}
POLICIES = tuple(_POLICIES)
"""Names ``collect`` accepts for ``policy``."""


def collect(
    env_id: str,
    episodes: int,
    seed: int = 0,
    policy: str | Policy = "random",
    agent_id: str = "agent-0000",
    env_kwargs: dict[str, Any] | None = None,
    num_envs: int = 8,
    progress: bool = False,
) -> Transitions | ImageTransitions:
    """Run ``policy`` until exactly ``episodes`` episodes have ended and return their steps.

    Episodes still running when the count is reached, and any finishing in the same step
    beyond it, are dropped, so only whole episodes are returned. Episode ``i`` (numbered in
    the order episodes end) has ``eps_id`` ``f"{agent_id}-{seed}-{i}"``, ``t`` 0.. without
    gaps, rows contiguous and in time order; only its last row has ``terminateds`` or
    ``truncateds`` set.

    Args:
        env_id: a gymnasium id whose spaces ``make_env`` accepts.
        episodes: number of whole episodes to return, >= 1.
        seed: >= 0; fixes env resets and actions, so equal arguments give equal data.
        policy: one of ``POLICIES``, or a callable mapping N observations to actions (N, A).
        agent_id: written into every row and into the episode ids.
        env_kwargs: passed to ``make_env`` for every copy.
        num_envs: copies stepped in lockstep (capped at ``episodes``); results depend on it.
        progress: show a tqdm bar of finished episodes on stderr.

    Returns:
        Transitions with B rows, grouped by episode, ``model_version`` ""; ImageTransitions (those rows, their
        frames beside them) when the env observes camera frames.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    # A negative seed would put a '-' into eps_id and make ids of different agents collide.
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if not callable(policy) and policy not in _POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {list(POLICIES)}")
    if not agent_id:
        raise ValueError("agent_id must be a non-empty string")

    n = min(num_envs, episodes)
    # Independent streams for env resets and for actions, and none shared between seeds
    # (gymnasium's default seeds env i with seed + i, which would overlap seed + 1's envs).
    env_stream, action_stream = np.random.SeedSequence(int(seed)).spawn(2)
    make = functools.partial(make_env, env_id, **(env_kwargs or {}))
    # NEXT_STEP autoreset: the step after an episode ends only resets that copy. Its output
    # is not a transition and is masked out; the ending step itself returns the true final obs.
    envs = SyncVectorEnv([make for _ in range(n)], autoreset_mode=AutoresetMode.NEXT_STEP)
    try:
        act = policy if callable(policy) else _POLICIES[policy](env_id, envs.single_action_space,
                                                                np.random.default_rng(action_stream))
        steps = _run(envs, act, episodes, [int(s) for s in env_stream.generate_state(n)], env_id, progress)
    finally:
        envs.close()
    return _episodes(steps, episodes, agent_id, int(seed))


def _run(
    envs: SyncVectorEnv, act: Policy, episodes: int, env_seeds: list[int], env_id: str, progress: bool
) -> dict[str, np.ndarray]:
    """Step all copies until ``episodes`` episodes end; every array has (T*N, ...) rows, time-major."""
    n = envs.num_envs
    records: list[dict[str, np.ndarray]] = []
    t = np.zeros(n, dtype=np.int64)  # step index of each copy's next logged transition
    episode = np.zeros(n, dtype=np.int64)  # episodes begun so far on each copy
    resetting = np.zeros(n, dtype=bool)  # copy ended an episode last step; this step resets it
    done_total = 0
    obs, _ = envs.reset(seed=env_seeds)
    with tqdm(total=episodes, desc=f"collect {env_id}", unit="ep", file=sys.stderr, disable=not progress) as bar:
        while done_total < episodes:
            actions = act(obs)  # (N, A)
            new_obs, rewards, terminateds, truncateds, infos = envs.step(actions)
            logged = ~resetting
            now = np.datetime64(datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None), "us")
            records.append(
                {
                    **_parts(obs, "obs", OBS_IMAGE),
                    "actions": actions,
                    "rewards": rewards,
                    **_parts(new_obs, "new_obs", NEW_OBS_IMAGE),
                    "terminateds": terminateds,
                    "truncateds": truncateds,
                    "violations": _violations(infos, n),
                    "logged": logged,
                    "t": t,
                    "key": episode * n + np.arange(n),  # unique per (copy, episode on that copy)
                    "time": np.full(n, now),
                }
            )
            ended = (terminateds | truncateds) & logged
            # New arrays rather than in-place updates: the recorded ones must not change.
            t = np.where(ended, 0, t + logged)
            episode = episode + ended
            resetting = ended
            obs = new_obs
            new = int(ended.sum())
            bar.update(min(new, episodes - done_total))
            done_total += new
    return {name: np.concatenate([r[name] for r in records]) for name in records[0]}


def _violations(infos: dict[str, Any], n: int) -> np.ndarray:
    """The N copies' own constraint test at their new state (``info[VIOLATION_INFO]``; for Nav2D and PixelNav2D
    a position inside a no-fly zone) as (N,) int8: 1, 0, or ``UNKNOWN`` for a copy whose env gave none."""
    if VIOLATION_INFO not in infos:
        return np.full(n, UNKNOWN, np.int8)
    given = infos[f"_{VIOLATION_INFO}"]  # (N,) which copies' infos hold the key (the vector env's mask)
    return np.where(given, np.asarray(infos[VIOLATION_INFO], bool), UNKNOWN).astype(np.int8)


def _parts(obs: Observation, vector: str, image: str) -> dict[str, np.ndarray]:
    """A batch of observations as flat arrays: the vector part under ``vector`` ((N, 0) when there is none),
    the frames (N, H, W, C), if any, under ``image``."""
    if isinstance(obs, dict):
        return {vector: obs[PROPRIO_KEY], image: obs[IMAGE_KEY]}
    if obs.ndim == 4:
        return {vector: np.zeros((len(obs), 0), np.float32), image: obs}
    return {vector: obs}


def _episodes(steps: dict[str, np.ndarray], episodes: int, agent_id: str, seed: int
              ) -> Transitions | ImageTransitions:
    """Keep the first ``episodes`` episodes to end, numbered in that order, rows grouped by episode."""
    logged, key = steps["logged"], steps["key"]
    ended_keys = key[logged & (steps["terminateds"] | steps["truncateds"])]  # in (step, copy) order
    chosen = ended_keys[:episodes]
    order = np.argsort(chosen)
    sorted_keys = chosen[order]
    pos = np.minimum(np.searchsorted(sorted_keys, key), len(chosen) - 1)
    keep = np.flatnonzero(logged & (sorted_keys[pos] == key))
    keep = keep[np.lexsort((steps["t"][keep], order[pos[keep]]))]  # by episode, then t
    index = order[pos[keep]]  # episode number of each kept row
    names = np.array([f"{agent_id}-{seed}-{i}" for i in range(episodes)], dtype=object)
    rows = Transitions.build(
        obs=steps["obs"][keep],
        actions=steps["actions"][keep],
        rewards=steps["rewards"][keep],
        new_obs=steps["new_obs"][keep],
        terminateds=steps["terminateds"][keep],
        truncateds=steps["truncateds"][keep],
        eps_id=names[index],
        agent_id=agent_id,
        t=steps["t"][keep],
        model_version="",
        timestamp=steps["time"][keep],
        violations=steps["violations"][keep],
    )
    if OBS_IMAGE not in steps:
        return rows
    return ImageTransitions(rows, steps[OBS_IMAGE][keep], steps[NEW_OBS_IMAGE][keep])
