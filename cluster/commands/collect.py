"""`wm collect`: run a behaviour policy in an env and append trajectory logs."""

from __future__ import annotations

import argparse
import time
from typing import Any

DEFAULT_EPISODES = 100
"""Episodes collected when ``--episodes`` is not given: the data the README's Nav2D models learn from."""


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("collect", parents=[common])
    p.add_argument("--env", required=True, help="gymnasium id, e.g. Nav2D-v0 or Pendulum-v1")
    p.add_argument("--episodes", type=int, default=DEFAULT_EPISODES, help="episodes to collect (default: %(default)s)")
    p.add_argument("--out", required=True, help="log directory or URI (appended to)")
    p.add_argument("--policy", default="random", help="behaviour policy (random)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--agent-id", default="agent-0000", help="agent id written with every row")
    p.add_argument("--no-fly-zones", type=int, default=0, metavar="Z", help="Nav2D only: zones per episode")
    p.set_defaults(handler=run_collect)


def run_collect(args: argparse.Namespace) -> dict[str, Any]:
    from worldmodel.data import TrajectoryWriter
    from worldmodel.envs.collect import collect

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    env_kwargs = {"num_no_fly_zones": args.no_fly_zones} if args.no_fly_zones else None
    start = time.perf_counter()
    data = collect(args.env, args.episodes, seed=args.seed, policy=args.policy, agent_id=args.agent_id,
                   env_kwargs=env_kwargs, progress=not args.json)
    files = TrajectoryWriter(args.out, env_id=args.env).write(data)
    ends = data.terminateds | data.truncateds
    result = {
        "command": "collect", "env": args.env, "policy": args.policy, "seed": args.seed,
        "episodes": int(ends.sum()), "transitions": len(data), "files": len(files), "out": args.out,
        "mean_return": float(data.rewards.sum() / max(ends.sum(), 1)),
        "terminated_episodes": int(data.terminateds.sum()), "seconds": round(time.perf_counter() - start, 3),
    }
    result["_summary"] = [f"collected {result['episodes']} episodes ({len(data)} transitions) of {args.env} "
                          f"into {len(files)} file(s) under {args.out}",
                          f"mean return {result['mean_return']:.2f}"]
    return result
