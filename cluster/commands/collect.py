"""`wm collect`: run a behaviour policy in an env and append trajectory logs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from worldmodel.envs.warehouse import DEFAULT_ROBOTS

DEFAULT_EPISODES = 100
"""Episodes collected when ``--episodes`` is not given: the data the README's Nav2D models learn from."""
DEFAULT_FLOOR_EPISODES = 10
"""Warehouse-v1's floor episodes when ``--episodes`` is not given: 300,000 transitions at 50 robots."""
GIF_FRAMES = 150
"""Most frames in a ``--gif``: longer episodes show every k-th tick, still in real time."""
PNG_FRAMES = 8
"""Frames in a camera env's ``--png``: spread evenly over the first episode."""


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("collect", parents=[common])
    p.add_argument("--env", required=True, help="gymnasium id, e.g. Nav2D-v0, PixelNav2D-v0 (camera frames, "
                                                "logged as image logs), Warehouse-v1 or Pendulum-v1")
    p.add_argument("--episodes", type=int, default=None,
                   help=f"episodes to collect; Warehouse-v1: floor episodes of every robot (default: "
                        f"{DEFAULT_EPISODES}, Warehouse-v1 {DEFAULT_FLOOR_EPISODES})")
    p.add_argument("--out", required=True, help="log directory or URI (appended to)")
    p.add_argument("--policy", default=None, help="behaviour policy: random (uniform actions), held (uniform "
                   "actions held for a few steps: random play that reaches speed); Warehouse-v1 also task (its "
                   "default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--agent-id", default="agent-0000", help="agent id written with every row (Warehouse-v1: "
                                                            "robot-0000, robot-0001, ...)")
    p.add_argument("--no-fly-zones", type=int, default=None, metavar="Z",
                   help="Nav2D and PixelNav2D only: zones per episode (default: the env's, 0 and 2)")
    p.add_argument("--robots", type=int, default=None, help=f"Warehouse-v1 only: robots on the floor "
                                                            f"(default: {DEFAULT_ROBOTS})")
    p.add_argument("--steps", type=int, default=None, help="Warehouse-v1 only: ticks per floor episode "
                                                           "(default: a whole floor episode)")
    p.add_argument("--png", default=None, help="Warehouse-v1: draw the first floor episode's paths and contacts; "
                                               f"camera envs: {PNG_FRAMES} frames of the first episode")
    p.add_argument("--gif", default=None, help="Warehouse-v1 only: animate the first floor episode")
    p.add_argument("--proprio", action="store_true", default=None,
                   help="camera envs only: observe the velocity beside the frame (a Dict observation)")
    p.add_argument("--occlusion", type=float, default=None, metavar="P",
                   help="camera envs only: chance per frame of a blanked patch (default: the env's, 0)")
    p.set_defaults(handler=run_collect)


def run_collect(args: argparse.Namespace) -> dict[str, Any]:
    from worldmodel.data import TrajectoryWriter
    from worldmodel.data.images import ImageTransitions
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
    rows = data.rows if isinstance(data, ImageTransitions) else data
    ends = rows.terminateds | rows.truncateds
    result = {
        "command": "collect", "env": args.env, "policy": result.pop("policy"), "seed": args.seed,
        "episodes": episodes, "transitions": len(data), "files": len(files), "out": args.out,
        "mean_return": float(rows.rewards.sum() / max(ends.sum(), 1)),
        "terminated_episodes": int(rows.terminateds.sum()), **result,
        "seconds": round(time.perf_counter() - start, 3),
    }
    what = f"{episodes} floor episodes of {result['robots']} robots" if warehouse else f"{episodes} episodes"
    result["_summary"] = [f"collected {what} ({len(data)} transitions) of {args.env} "
                          f"into {len(files)} file(s) under {args.out}",
                          f"mean return {result['mean_return']:.2f}", *result.pop("_lines", [])]
    return result


def _collect_agents(args: argparse.Namespace, episodes: int) -> tuple[Any, dict[str, Any]]:
    """Lone agents in N lockstepped copies of a gymnasium env."""
    from worldmodel.data.images import ImageTransitions
    from worldmodel.envs.collect import collect

    for flag, value in (("--robots", args.robots), ("--steps", args.steps), ("--gif", args.gif)):
        if value is not None:
            raise ValueError(f"{flag} is for Warehouse-v1 only, got it with --env {args.env}")
    policy = args.policy or "random"
    env_kwargs = {"num_no_fly_zones": args.no_fly_zones} if args.no_fly_zones is not None else {}
    env_kwargs.update(_camera_options(args))
    data = collect(args.env, episodes, seed=args.seed, policy=policy, agent_id=args.agent_id,
                   env_kwargs=env_kwargs or None, progress=not args.json)
    extra: dict[str, Any] = {"policy": policy}
    if isinstance(data, ImageTransitions):
        extra["image_shape"] = list(data.image_shape)
        extra["_lines"] = ["frames {}x{}x{} logged as image logs".format(*data.image_shape)]
        if args.png:
            extra["png"] = str(_frames_png(data, Path(args.png)))
    return data, extra


def _camera_options(args: argparse.Namespace) -> dict[str, Any]:
    """The camera env's constructor options the flags set; ValueError when a camera flag meets an env without
    camera frames."""
    from worldmodel.envs import make_env, space_spec

    flags = {"--png": args.png, "--proprio": args.proprio, "--occlusion": args.occlusion}
    given = [flag for flag, value in flags.items() if value is not None]
    if given and space_spec(make_env(args.env), args.env).image_shape is None:
        only = "Warehouse-v1 only (or an env that observes camera frames)" if given[0] == "--png" else \
            "envs that observe camera frames only"
        raise ValueError(f"{given[0]} is for {only}, got it with --env {args.env}")
    options = {"proprio": args.proprio, "occlusion_prob": args.occlusion}
    return {name: value for name, value in options.items() if value is not None}


def _frames_png(data: Any, path: Path) -> Path:
    """``PNG_FRAMES`` frames spread over the first episode of ``data`` (ImageTransitions), in one PNG."""
    from PIL import Image

    from worldmodel.envs.camera_render import contact_sheet

    first = data.rows.eps_id == data.rows.eps_id[0]  # rows are grouped by episode, first episode first
    picked = np.linspace(0, int(first.sum()) - 1, num=min(PNG_FRAMES, int(first.sum()))).round().astype(int)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(contact_sheet(data.obs_image[picked])).save(path, format="PNG")
    return path


def _collect_floor(args: argparse.Namespace, episodes: int) -> tuple[Any, dict[str, Any]]:
    """Floor episodes of every robot on one warehouse floor; the first one drawn when asked."""
    from worldmodel.data import Transitions
    from worldmodel.envs.fleet_collect import fleet_episodes
    from worldmodel.envs.warehouse import EPISODE_STEPS

    if args.no_fly_zones:
        raise ValueError(f"--no-fly-zones is for Nav2D only, got it with --env {args.env}")
    for flag, value in (("--proprio", args.proprio), ("--occlusion", args.occlusion)):
        if value is not None:
            raise ValueError(f"{flag} is for envs that observe camera frames only, got it with --env {args.env}")
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
