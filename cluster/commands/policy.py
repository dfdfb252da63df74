"""`wm policy train`: train a policy inside a world model with RLlib's PPO and save it beside the model;
`wm policy tune`: a Ray Tune sweep over the policy's settings (``tune.policy_sweep``), the best one saved so.

The policy (``planners.policy.PolicyNet``) lands in ``MODEL_DIR/policy/`` with its own checksum and
version; serving and planning load it from there as the fallback, the planning prior and for
policy-only answers. Imagined rollouts start from the observations of the logs given with ``--data``
(a Warehouse-v1 fleet model: from their whole floor ticks, every robot of a floor stepped jointly).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learners.settings import PolicySettings

if TYPE_CHECKING:
    from learners.policy_training import IterationStats, PolicyResult

_DEFAULTS = PolicySettings()
TUNE_OUT = "~/ray_results/fleetwm-policy-tune"
"""Where `wm policy tune` runs go unless --out says otherwise."""


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("policy", parents=[common], help="train a policy inside a world model (RLlib PPO)")
    # Nested subparsers take the parent's class, so their argparse errors become UsageError too.
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(p))
    a = actions.add_parser("train", parents=[common], description=__doc__.split("\n\n", 1)[0],
                           help="train a policy on imagined rollouts and save it in the model directory")
    a.add_argument("--model", required=True, metavar="VERSION_OR_DIR",
                   help="model directory, or with --registry a version or stage")
    a.add_argument("--registry", default=None, metavar="URI", help="model registry directory")
    a.add_argument("--data", required=True, metavar="URI", help="trajectory logs of the model's env (the starts)")
    a.add_argument("--iterations", type=int, default=None,
                   help="PPO iterations (default: the env's preset, %d for most)" % _DEFAULTS.iterations)
    a.add_argument("--num-envs", type=int, default=None, help="imagined rollouts stepped together; floors of "
                   "robots for a fleet model (default: the model's preset, %d for most)" % _DEFAULTS.num_envs)
    a.add_argument("--eval-episodes", type=int, default=None, help="episodes of the final evaluations "
                   "(default: %d)" % _DEFAULTS.eval_episodes)
    a.add_argument("--seed", type=int, default=None, help="(default: %d)" % _DEFAULTS.seed)
    a.add_argument("--png", default=None, metavar="PATH",
                   help="learning curve PNG (default: MODEL_DIR/policy/learning_curve.png)")
    a.add_argument("--address", default=None, help="Ray cluster address (default: an embedded local Ray)")
    a.add_argument("--quiet", action="store_true", help="no progress on stderr")
    a.set_defaults(handler=run_train)
    t = actions.add_parser("tune", parents=[common], help="a Ray Tune sweep over the policy's settings; the best "
                           "trial's policy is saved in the model directory")
    t.add_argument("--model", required=True, metavar="VERSION_OR_DIR",
                   help="model directory, or with --registry a version or stage")
    t.add_argument("--registry", default=None, metavar="URI", help="model registry directory")
    t.add_argument("--data", required=True, metavar="URI", help="trajectory logs of the model's env (the starts)")
    t.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="trials of every combination of the values, seeded --seed, --seed + 1, ... (default: 1)")
    t.add_argument("--space", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values of a PolicySettings field to try, every combination a trial (repeatable; "
                        "default: lr=3e-4,1e-3,3e-3 hidden=32,64,128)")
    t.add_argument("--iterations", type=int, default=None, help="PPO iterations per trial (default: the preset's)")
    t.add_argument("--eval-episodes", type=int, default=None, help="real-env episodes scoring each trial "
                   "(default: %d)" % _DEFAULTS.eval_episodes)
    t.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="the first repeat's seed (default: %(default)s)")
    t.add_argument("--out", default=TUNE_OUT, metavar="DIR", help="where Tune keeps the run (default: %(default)s)")
    t.add_argument("--address", default=None, help="Ray cluster address (default: an embedded local Ray)")
    t.add_argument("--quiet", action="store_true", help="no progress on stderr")
    t.set_defaults(handler=run_tune)


def model_dir(ref: str, registry: str | None) -> Path:
    """The local directory of ``ref``: a directory, or with ``registry`` a version or stage in it.

    Raises:
        FileNotFoundError: no such directory; RegistryError: no such version or stage.
        ValueError: a remote registry (its artifacts are downloaded copies; the policy would not reach it).
    """
    if registry is None:
        path = Path(ref)
        if not path.is_dir():
            raise FileNotFoundError(f"--model {ref}: no such model directory (or pass --registry)")
        return path
    from worldmodel.registry import ModelRegistry

    reg = ModelRegistry(registry)
    if reg.remote:
        raise ValueError(f"--registry {registry} is remote: the policy is written into the model's directory, "
                         "so train it on a local registry (or a model directory) and upload that")
    return reg.model_dir(ref)


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from cluster.runtime import init_ray
    from learners.policy_training import check_logs, policy_preset, train_policy
    from worldmodel.artifact import load_model

    # A bad model, logs or setting fails here, before Ray starts.
    path = model_dir(args.model, args.registry)
    model = load_model(path)
    check_logs(args.data, model.spec.env_id)
    settings = policy_preset(model, iterations=args.iterations, num_envs=args.num_envs,
                             eval_episodes=args.eval_episodes, seed=args.seed)
    verbose = not args.quiet
    start = time.perf_counter()
    info = init_ray(args.address)
    try:
        result = train_policy(path, args.data, settings, progress=None if verbose else _silent)
    finally:
        if info.started:
            ray.shutdown()
    png = plot_curve(result, Path(args.png) if args.png else Path(result.path) / "learning_curve.png")
    out: dict[str, Any] = {"command": "policy train", "model_dir": str(path), **result.to_dict(), "png": str(png),
                           "seconds": round(time.perf_counter() - start, 2)}
    out["_summary"] = _summary(result, png)
    return out


def run_tune(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from cluster.commands.tune import parse_values
    from cluster.runtime import init_ray
    from learners.policy_training import check_logs
    from tune.policy_sweep import DEFAULT_POLICY_SPACE, PolicySweep, run_policy_sweep
    from worldmodel.artifact import load_model

    path = model_dir(args.model, args.registry)  # a bad model, logs or setting fails here, before Ray starts
    check_logs(args.data, load_model(path).spec.env_id)
    space = dict(DEFAULT_POLICY_SPACE) | {key: tuple(values) for key, values in map(parse_values, args.space)}
    sweep = PolicySweep(str(path), args.data, space, args.repeats, seed=args.seed,
                        base={"iterations": args.iterations, "eval_episodes": args.eval_episodes})
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    info = init_ray(args.address)
    try:
        result = run_policy_sweep(sweep, args.out, say)
    finally:
        if info.started:
            ray.shutdown()
    out: dict[str, Any] = {"command": "policy tune", "model_dir": str(path), "space": {k: list(v) for k, v in
                                                                                       space.items()},
                           **result.to_dict()}
    best = result.best
    success = "" if best.success_rate is None else f", success {best.success_rate:.1%}"
    out["_summary"] = [f"{len(result.trials)} trials in {result.seconds} s; best {best.settings}: real return "
                       f"{best.score:.1f}{success}", f"saved its policy {result.saved.version} to {result.saved.path}"]
    return out


def _silent(stats: IterationStats) -> None:
    pass


def _evaluation_line(name: str, ev: dict[str, Any], violation: str) -> str:
    success = "" if ev["success_rate"] is None else f", success {ev['success_rate']:.1%}"
    return (f"{name}: {ev['episodes']} episodes, mean return {ev['mean_return']:.1f}{success}, "
            f"{ev['violations']} {violation} steps in {ev['episodes_with_violation']} episodes")


def _summary(result: PolicyResult, png: Path) -> list[str]:
    from worldmodel.envs.warehouse import WAREHOUSE_ID

    violation = "contact" if result.env_id == WAREHOUSE_ID else "zone violation"
    return [f"wrote policy {result.version} for model {result.model_version} ({result.env_id}) to {result.path} "
            f"in {result.seconds} s (PPO {result.train_seconds} s); curve in {png}",
            _evaluation_line("imagined", vars(result.imagined), violation),
            _evaluation_line("real floor (robots)" if violation == "contact" else "real env", vars(result.real), violation)]


def plot_curve(result: PolicyResult, path: Path) -> Path:
    """The learning curve (imagined return and success per iteration) with the final evaluations."""
    from cluster.commands.report import plt, save_figure

    steps = [c.env_steps for c in result.curve]
    fig, (ret_ax, succ_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    # Iterations in which no imagined episode ended have no return (None): gaps, bridged by markers.
    returns = [math.nan if c.mean_return is None else c.mean_return for c in result.curve]
    ret_ax.plot(steps, returns, color="C0", marker=".", label="imagined episodes, PPO's reward")
    ret_ax.axhline(result.imagined.mean_return, color="C0", ls="--", lw=0.8,
                   label="imagined, mean action, planners' objective")
    ret_ax.axhline(result.real.mean_return, color="C2", ls="--", lw=0.8, label="real env, mean action")
    ret_ax.set(title="mean episode return", xlabel="imagined env steps")
    ret_ax.legend()
    if result.real.success_rate is not None:
        succ_ax.plot(steps, [c.success for c in result.curve], color="C1", label="imagined episodes (PPO)")
        succ_ax.axhline(result.real.success_rate, color="C2", ls="--", lw=0.8,
                        label=f"real env, {result.settings.eval_zones} zones, mean action")
        succ_ax.legend()
    succ_ax.set(title="share of episodes reaching the goal", xlabel="imagined env steps", ylim=(0, 1.02))
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path, f"policy {result.version} for {result.env_id} model {result.model_version}")
