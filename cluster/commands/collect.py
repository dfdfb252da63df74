"""`wm collect`: run a behaviour policy in an env and append trajectory logs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

DEFAULT_EPISODES = 100
"""Episodes collected when ``--episodes`` is not given: the data the README's Nav2D models learn from."""
DEFAULT_FLOOR_EPISODES = 10
"""Warehouse-v0's floor episodes when ``--episodes`` is not given: 300,000 transitions at 50 robots."""
DEFAULT_ROBOTS = 50
"""Warehouse-v0's robots on the floor when ``--robots`` is not given (the issue's benchmark floor)."""
GIF_FRAMES = 150
"""Most frames in a ``--gif``: longer episodes show every k-th tick, still in real time."""


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("collect", parents=[common])
    p.add_argument("--env", required=True, help="gymnasium id, e.g. Nav2D-v0, Warehouse-v0 or Pendulum-v1")
    p.add_argument("--episodes", type=int, default=None,
                   help=f"episodes to collect; Warehouse-v0: floor episodes of every robot (default: "
                        f"{DEFAULT_EPISODES}, Warehouse-v0 {DEFAULT_FLOOR_EPISODES})")
    p.add_argument("--out", required=True, help="log directory or URI (appended to)")
    p.add_argument("--policy", default=None, help="behaviour policy: random; Warehouse-v0 also task (its default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--agent-id", default="agent-0000", help="agent id written with every row (Warehouse-v0: "
                                                            "robot-0000, robot-0001, ...)")
    p.add_argument("--no-fly-zones", type=int, default=0, metavar="Z", help="Nav2D only: zones per episode")
    p.add_argument("--robots", type=int, default=None, help=f"Warehouse-v0 only: robots on the floor "
                                                            f"(default: {DEFAULT_ROBOTS})")
    p.add_argument("--steps", type=int, default=None, help="Warehouse-v0 only: ticks per floor episode "
                                                           "(default: a whole floor episode)")
    p.add_argument("--png", default=None, help="Warehouse-v0 only: draw the first floor episode's paths and contacts")
    p.add_argument("--gif", default=None, help="Warehouse-v0 only: animate the first floor episode")
    p.set_defaults(handler=run_collect)


def run_collect(args: argparse.Namespace) -> dict[str, Any]:
    from worldmodel.data import TrajectoryWriter
    from worldmodel.envs import WAREHOUSE_ID

    warehouse = args.env == WAREHOUSE_ID
    episodes = args.episodes if args.episodes is not None else DEFAULT_FLOOR_EPISODES if warehouse \
        else DEFAULT_EPISODES
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    start = time.perf_counter()
    if warehouse:
        data, result = _collect_floor(args, episodes)
    else:
        data, result = _collect_agents(args, episodes)
    files = TrajectoryWriter(args.out, env_id=args.env).write(data)
    ends = data.terminateds | data.truncateds
    result = {
        "command": "collect", "env": args.env, "policy": result.pop("policy"), "seed": args.seed,
        "episodes": episodes, "transitions": len(data), "files": len(files), "out": args.out,
        "mean_return": float(data.rewards.sum() / max(ends.sum(), 1)),
        "terminated_episodes": int(data.terminateds.sum()), **result,
        "seconds": round(time.perf_counter() - start, 3),
    }
    what = f"{episodes} floor episodes of {result['robots']} robots" if warehouse else f"{episodes} episodes"
    result["_summary"] = [f"collected {what} ({len(data)} transitions) of {args.env} "
                          f"into {len(files)} file(s) under {args.out}",
                          f"mean return {result['mean_return']:.2f}", *result.pop("_lines", [])]
    return result


def _collect_agents(args: argparse.Namespace, episodes: int) -> tuple[Any, dict[str, Any]]:
    """Lone agents in N lockstepped copies of a gymnasium env."""
    from worldmodel.envs.collect import collect

    for flag, value in (("--robots", args.robots), ("--steps", args.steps), ("--png", args.png), ("--gif", args.gif)):
        if value is not None:
            raise ValueError(f"{flag} is for Warehouse-v0 only, got it with --env {args.env}")
    policy = args.policy or "random"
    env_kwargs = {"num_no_fly_zones": args.no_fly_zones} if args.no_fly_zones else None
    data = collect(args.env, episodes, seed=args.seed, policy=policy, agent_id=args.agent_id,
                   env_kwargs=env_kwargs, progress=not args.json)
    return data, {"policy": policy}


def _collect_floor(args: argparse.Namespace, episodes: int) -> tuple[Any, dict[str, Any]]:
    """Floor episodes of every robot on one warehouse floor; the first one drawn when asked."""
    from worldmodel.data import Transitions
    from worldmodel.envs.fleet_collect import fleet_episodes
    from worldmodel.envs.warehouse import EPISODE_STEPS

    if args.no_fly_zones:
        raise ValueError(f"--no-fly-zones is for Nav2D only, got it with --env {args.env}")
    robots = args.robots if args.robots is not None else DEFAULT_ROBOTS
    policy = args.policy or "task"
    parts, extra = [], {"policy": policy, "robots": robots}
    collisions = shelf_collisions = deliveries = 0
    steps = args.steps if args.steps is not None else EPISODE_STEPS
    for i, episode in enumerate(fleet_episodes(robots, episodes, args.seed, policy, steps, progress=not args.json)):
        parts.append(episode.transitions())
        collisions += int(episode.collisions.sum())
        shelf_collisions += int(episode.shelf_collisions.sum())
        deliveries += int(episode.deliveries.sum())
        if i == 0:
            extra.update(_draw(episode, args))
    extra["_lines"] = [f"{deliveries} deliveries, {collisions} robot contacts, {shelf_collisions} shelf contacts "
                       f"(robot-ticks)"]
    return Transitions.concat(parts), extra


def _draw(episode: Any, args: argparse.Namespace) -> dict[str, str]:
    """The ``--png`` and ``--gif`` of one floor episode; returns their paths by flag."""
    from worldmodel.envs.warehouse import DT
    from worldmodel.envs.warehouse_render import animate, draw_floor, floor_frames

    out = {}
    title = f"{args.env}: {episode.scene}, {episode.paths.shape[1]} robots"
    if args.png:
        out["png"] = str(draw_floor(episode.layout, episode.paths, episode.path_collisions, Path(args.png),
                                    title=title, humans=episode.humans))
    if args.gif:
        stride = -(-len(episode.paths) // GIF_FRAMES)  # ceil
        frames = floor_frames(episode.layout, episode.paths, episode.humans, episode.path_collisions, stride)
        out["gif"] = str(animate(frames, Path(args.gif), fps=1.0 / (DT * stride)))
    return out
