"""Safety (issue 15): the policy learned inside the world model as fallback, prior and alone, and the shield.

One run, on this machine, from logs collected here:

1. **Fallback.** Nav2D, 2 no-fly zones, a planning budget so small that every call falls back: the
   policy's action (shielded) against the zero action, over ``--fallback-episodes`` episodes.
2. **Prior.** The served planner (CEM H30 K32 x1) against CEM with the policy's rollouts as a share of
   fewer candidates, and that planner without them, each over ``--prior-episodes`` episodes, with the
   planner's FLOPs per action.
3. **Model error.** Models trained on a small share of the data (``--small-episodes``: a few episodes of
   random play or the first transitions of them, against the default model's 100 episodes): the planner
   without and with the shield, over ``--error-episodes`` episodes.
4. **Pendulum.** `wm mbrl` collects 1,000 env steps (5 episodes: one random, four planned by PETS),
   `wm train` learns a model from them, `wm policy train` trains a policy inside it only (its imagined
   episodes start from the logged states and from first observations of `env.reset`, no step taken);
   the policy alone plays the real Pendulum-v1.
5. **Inference.** The policy for 1,000 agents in one call on one core, against the served planner's
   call for the same agents in the same run.

Every model and policy is made by the `wm` commands a user runs, with their defaults (`wm collect`,
`wm train`, `wm policy train`); the closed loops are `planners.evaluate.closed_loop`, what
`wm eval` runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks.common import RESULTS, machine, record, wm
from benchmarks.pendulum_mbrl import SETTINGS as PENDULUM_MBRL
from planners.config import EvalConfig, PlanConfig
from planners.evaluate import EvalResult, closed_loop
from planners.policy_artifact import load_policy
from worldmodel.artifact import load_model
from worldmodel.data.reader import list_log_files
from worldmodel.model import WorldModel

TARGETS = {"fallback_success": 0.95, "fallback_violations": 0, "prior_success": 0.999, "prior_episodes": 5000,
           "prior_flops_ratio": 0.5, "error_violations_unshielded": 50, "error_reduction": 10.0,
           "error_episodes": 500, "pendulum_return": -200.0, "inference_ms": 1.0}
SERVED = PlanConfig()
"""The served planner (CEM H30 K32 x1): the prior row's reference."""
PRIOR = dataclasses.replace(SERVED, horizon=36, samples=9, prior_share=0.22)
"""Under half the served FLOPs: 9 candidates, 2 of them the policy's rollouts, over a 3.6 s horizon. Chosen over
3,000 episodes among K 6-16 and H 30-45 at under 0.6x: the policy's sequences let a few candidates see around the
zones, and the longer horizon shows what going around is worth (at H30, K12 with 2 of the policy's: 99.8%)."""
NO_PRIOR = dataclasses.replace(PRIOR, prior_share=0.0)
"""``PRIOR`` without the policy's rollouts: what the prior itself adds."""
TINY_BUDGET_MS = 0.001
"""A budget no planning round fits: every call falls back."""
NAV2D_EPISODE_STEPS = 200
"""Steps of one Nav2D-v0 episode of random play (it never ends early): the model-error shares' unit."""
SMALL_SHARES = "4,5,5/650@13,5/700@13"
"""The model-error models' data (``Share``'s CLI form): two whole-episode shares for context and the
regime where the target's premise holds and its neighbour (docs/templates/safety.md says why these)."""
PARTS = ("nav2d", "prior", "model_error", "pendulum")
"""The parts of the results, each stamped with when and on what code it was measured (``measured``)."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _row(name: str, result: EvalResult, **extra: Any) -> dict[str, Any]:
    out = {"name": name, "episodes": result.episodes, "success_rate": result.success_rate,
           "violations": result.violations, "episodes_with_violation": result.episodes_with_violation,
           "fallbacks": result.fallbacks, "steps": result.steps,
           "shield_interventions": result.shield_interventions, "mean_return": result.mean_return,
           "plan_ms_mean": result.plan_ms_mean} | extra
    say(f"  {name}: {result.episodes} episodes, success {result.success_rate:.2%}, {result.violations} steps in "
        f"zones, {result.fallbacks}/{result.steps} fallbacks, {result.shield_interventions} shielded")
    return out


def evaluate(model: WorldModel, policy: Any, episodes: int, seed: int, plan: PlanConfig = SERVED,
             **options: Any) -> EvalResult:
    """Nav2D with 2 zones, 100 agents in lockstep, the learned reward: ``closed_loop`` with ``options``."""
    cfg = EvalConfig(agents=100, episodes=episodes, no_fly_zones=2, seed=seed, plan=plan, **options)
    return closed_loop(model, cfg, policy=policy)


def flops_per_action(model: WorldModel, plan: PlanConfig, policy: torch.nn.Module | None) -> float:
    """Multiply-adds x 2 of the networks one planned action costs: every candidate's rollout (one member
    per candidate, ts1), the learned reward on each step, the policy's rollouts for the prior (the policy
    and one member on each step, then its candidates' rollouts) and the chosen plan's audit (every member)."""
    dyn, rew = _mlp_flops(model.dynamics), _mlp_flops(model.reward) / max(1, model.model_config.ensemble_size)
    members = model.model_config.ensemble_size
    own = plan.samples - plan.prior_samples
    rollouts = plan.iterations * plan.horizon * (own * (dyn / members + rew))
    prior = 0.0
    if plan.prior_samples and policy is not None:
        prior = plan.iterations * plan.horizon * (_mlp_flops(policy) + dyn / members
                                                  + plan.prior_samples * (dyn / members + rew))
    audit = plan.horizon * dyn
    return rollouts + prior + audit


def _mlp_flops(module: torch.nn.Module) -> float:
    """2 x the weights of every matrix in ``module`` (members included): one forward pass of one row each."""
    return float(sum(2 * p.numel() for name, p in module.named_parameters() if p.dim() >= 2))


def inference(policy: torch.nn.Module, model: WorldModel, agents: int = 1000, calls: int = 200) -> dict[str, Any]:
    """Median wall time of one policy call for ``agents`` on one thread, and the served planner's for the same."""
    from planners.service import FleetPlanner
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(0)
        obs = torch.as_tensor(rng.uniform(-5, 5, (agents, model.spec.obs_dim)), dtype=torch.float32)
        zones = torch.as_tensor(np.c_[rng.uniform(-5, 5, (agents, 2, 2)), np.ones((agents, 2, 1))],
                                dtype=torch.float32)
        params = {"zones": zones}
        policy.act(obs, params)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            policy.act(obs, params)
            times.append((time.perf_counter() - start) * 1000)
        planner = FleetPlanner(model)
        planner.plan(obs.numpy(), constraints={"zones": zones.numpy()})
        plan_times = []
        for _ in range(5):
            start = time.perf_counter()
            planner.plan(obs.numpy(), constraints={"zones": zones.numpy()})
            plan_times.append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(threads)
    return {"agents": agents, "threads": 1, "policy_ms_median": float(np.median(times)),
            "policy_ms_p99": float(np.percentile(times, 99)), "planner_ms_median": float(np.median(plan_times))}


def nav2d_policy(tmp: Path, args: argparse.Namespace) -> tuple[WorldModel, torch.nn.Module, dict[str, Any]]:
    """The default Nav2D model and its policy, made by `wm collect`, `wm train` and `wm policy train`; and how."""
    logs = str(tmp / "logs")
    say(f"collecting {args.collect_episodes} Nav2D episodes, training the default model and its policy")
    wm("collect", "--env", "Nav2D-v0", "--episodes", str(args.collect_episodes), "--out", logs, "--seed", str(args.seed))
    ours = wm("train", "--data", logs, "--out", str(tmp / "ours"))
    start = time.perf_counter()
    trained = wm("policy", "train", "--model", ours["model_dir"], "--data", logs, "--png", str(tmp / "curve.png"),
                 *_iterations(args))
    policy = load_policy(ours["model_dir"])
    if policy is None:
        raise RuntimeError(f"`wm policy train` left no policy in {ours['model_dir']}")
    return load_model(ours["model_dir"]), policy, {
        "train": {k: trained.get(k) for k in ("version", "train_seconds", "imagined", "real")},
        "train_minutes": (time.perf_counter() - start) / 60, "model_r2_min": ours["metrics"]["dynamics"]["r2_min"]}


def prior_rows(model: WorldModel, policy: torch.nn.Module, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The served planner, the prior's planner and that planner without the prior, on the same episodes."""
    say("2. the policy as the planner's prior")
    name = f"CEM H{PRIOR.horizon} K{PRIOR.samples} x1"
    return [_row("served: CEM H30 K32 x1", evaluate(model, None, args.prior_episodes, args.seed + 1, SERVED),
                 flops_per_action=flops_per_action(model, SERVED, None)),
            _row(f"{name}, {PRIOR.prior_samples} of them the policy's",
                 evaluate(model, policy.act, args.prior_episodes, args.seed + 1, PRIOR),
                 flops_per_action=flops_per_action(model, PRIOR, policy)),
            _row(f"{name}, no prior", evaluate(model, None, args.prior_episodes, args.seed + 1, NO_PRIOR),
                 flops_per_action=flops_per_action(model, NO_PRIOR, None))]


def nav2d(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    model, policy, made = nav2d_policy(tmp, args)
    act = policy.act

    say("1. every call falls back (budget %g ms)" % TINY_BUDGET_MS)
    tiny = dataclasses.replace(SERVED, budget_ms=TINY_BUDGET_MS)
    fallback = [_row("policy fallback, shield on", evaluate(model, act, args.fallback_episodes, args.seed, tiny)),
                _row("policy fallback, shield off",
                     evaluate(model, act, args.fallback_episodes, args.seed, tiny, shield=False)),
                _row("zero action, shield on", evaluate(model, None, args.fallback_episodes, args.seed, tiny))]

    prior = prior_rows(model, policy, args)

    error = model_error(tmp, args)

    say("5. policy inference for 1,000 agents on one core")
    speed = inference(policy, model)
    return {"policy": made, "fallback": fallback, "prior": prior, "model_error": error, "inference": speed}


PETS_MODEL = ["--hidden", "200", "--layers", "3", "--activation", "silu", "--ensemble-size", "5", "--epochs", "200",
              "--batch-size", "32", "--patience", "200"]
"""PETS' Pendulum model, as `benchmarks.pendulum_mbrl` learns it."""


def _iterations(args: argparse.Namespace) -> list[str]:
    """`wm policy train`'s PPO iterations: its per-env default unless a smoke run asks for fewer."""
    return [] if args.policy_iterations is None else ["--iterations", str(args.policy_iterations)]


@dataclasses.dataclass(frozen=True)
class Share:
    """A model-error model's data: the first ``transitions`` (None: all) of ``episodes`` episodes of random
    play collected with ``seed`` (None: ``--seed`` + 7). CLI form ``EPISODES[/TRANSITIONS][@SEED]``."""

    episodes: int
    transitions: int | None = None
    seed: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Share":
        match = re.fullmatch(r"(\d+)(?:/(\d+))?(?:@(\d+))?", text.strip())
        share = match and cls(*(None if g is None else int(g) for g in match.groups()))
        most = share and share.episodes * NAV2D_EPISODE_STEPS
        if not share or share.episodes <= 0 or not 0 < (share.transitions if share.transitions is not None
                                                         else most) <= most:
            raise argparse.ArgumentTypeError(
                f"expected EPISODES[/TRANSITIONS][@SEED] with 0 < TRANSITIONS <= 200 x EPISODES, got {text!r}")
        return share

    def __str__(self) -> str:
        return (f"{self.episodes}" + ("" if self.transitions is None else f"/{self.transitions}")
                + ("" if self.seed is None else f"@{self.seed}"))


def model_error(tmp: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """For each share in ``--small-episodes``: a model from it, planning without and with the shield, on the
    analytic objective (goal distance and zones) so the error injected is the dynamics'."""
    rows = []
    for share in args.small_episodes:
        seed = args.seed + 7 if share.seed is None else share.seed
        say(f"3. model error: a model from {share} ({share.episodes} episodes of random play, seed {seed})")
        logs = tmp / f"small-logs-{share.episodes}-{seed}"
        if not logs.exists():
            wm("collect", "--env", "Nav2D-v0", "--episodes", str(share.episodes), "--out", str(logs),
               "--seed", str(seed))
        data = logs if share.transitions is None else _first_transitions(logs, tmp / f"share-{share.episodes}-{seed}-"
                                                                         f"{share.transitions}", share.transitions)
        small = wm("train", "--data", str(data), "--out", str(tmp / f"small-{share}"))
        weak, r2 = load_model(small["model_dir"]), small["metrics"]["dynamics"]["r2_min"]
        count = share.transitions or share.episodes * NAV2D_EPISODE_STEPS
        for shield in (False, True):
            result = evaluate(weak, None, args.error_episodes, args.seed + 2, shield=shield, objective="goal")
            rows.append(_row(f"{_share_name(share, count, seed)}, shield {'on' if shield else 'off'}", result,
                             model_episodes=share.episodes, model_transitions=count, collect_seed=seed,
                             model_r2_min=r2))
    return rows


def _share_name(share: Share, count: int, seed: int) -> str:
    if share.transitions is None:
        return f"model from {share.episodes} episodes (seed {seed})"
    return f"model from the first {count:,} transitions of {share.episodes} episodes (seed {seed})"


def _first_transitions(logs: Path, out: Path, count: int) -> Path:
    """Write the first ``count`` rows of the logs under ``logs`` (in the order they were written) to ``out``,
    with the logs' schema and metadata: a share of the data finer than whole episodes."""
    tables = [pq.read_table(path) for path in list_log_files(str(logs))]
    table = pa.concat_tables(tables).slice(0, count)
    if table.num_rows < count:
        raise ValueError(f"{logs} holds {table.num_rows} transitions, expected at least {count}")
    out.mkdir(parents=True)
    pq.write_table(table, out / "part-0.parquet")
    return out


def pendulum(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    say("4. Pendulum: 1,000 env steps of PETS (`wm mbrl`), a model from them, a policy trained inside it only")
    run = tmp / "pendulum-mbrl"
    mbrl = wm("mbrl", "--env", "Pendulum-v1", "--episodes", "5", "--seed", str(args.seed), "--out", str(run),
              *PENDULUM_MBRL)
    model_dir = wm("train", "--data", mbrl["logs"], "--out", str(tmp / "pendulum"), *PETS_MODEL)["model_dir"]
    trained = wm("policy", "train", "--model", model_dir, "--data", mbrl["logs"], *_iterations(args))
    model, policy = load_model(model_dir), load_policy(model_dir)
    result = closed_loop(model, EvalConfig(agents=args.pendulum_episodes, episodes=args.pendulum_episodes,
                                           mode="policy", seed=args.seed + 3), policy=policy.act)
    say(f"  policy alone on Pendulum-v1: mean return {result.mean_return:.1f} over {result.episodes} episodes")
    return {"env_steps": sum(row["steps"] for row in mbrl["rows"]), "mpc_eval_mean_return": mbrl["eval_mean_return"],
            "policy_train": {k: trained.get(k) for k in ("train_seconds", "imagined", "real", "settings",
                                                          "logged_starts", "reset_starts")},
            "episodes": result.episodes, "mean_return": result.mean_return, "returns": result.returns}


def met(r: dict[str, Any]) -> dict[str, bool]:
    t, nav = TARGETS, r["nav2d"]
    shielded, served_prior = nav["fallback"][0], nav["prior"]
    return {
        "fallback": shielded["success_rate"] >= t["fallback_success"] and shielded["violations"] == 0,
        "prior": (served_prior[1]["success_rate"] >= t["prior_success"]
                  and served_prior[1]["episodes"] >= t["prior_episodes"]
                  and served_prior[1]["flops_per_action"] <= t["prior_flops_ratio"] * served_prior[0]["flops_per_action"]),
        "model_error": any(off["violations"] >= t["error_violations_unshielded"] and off["episodes"] >= t["error_episodes"]
                           and on["violations"] * t["error_reduction"] <= off["violations"]
                           for off, on in zip(nav["model_error"][::2], nav["model_error"][1::2])),
        # Both evaluations of the one policy: this run's and `wm policy train`'s own (200 episodes).
        "pendulum": min(r["pendulum"]["mean_return"],
                        r["pendulum"]["policy_train"]["real"]["mean_return"]) >= t["pendulum_return"],
        "inference": nav["inference"]["policy_ms_median"] < t["inference_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collect-episodes", type=int, default=100)
    parser.add_argument("--fallback-episodes", type=int, default=500)
    parser.add_argument("--prior-episodes", type=int, default=5000)
    parser.add_argument("--small-episodes", type=_shares, default=SMALL_SHARES,
                        help="each model-error model's data, comma-separated EPISODES[/TRANSITIONS][@SEED]: the "
                             "first TRANSITIONS of EPISODES episodes (200 steps each) of random play collected "
                             "with SEED (default: --seed + 7); default: "
                             f"{SMALL_SHARES}")
    parser.add_argument("--error-episodes", type=int, default=500)
    parser.add_argument("--pendulum-episodes", type=int, default=200)
    parser.add_argument("--policy-iterations", type=int, default=None, help="smoke runs only (default: wm's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="safety", help="results file name (smoke runs: another name)")
    parser.add_argument("--only", choices=["prior", "model_error", "pendulum"], default=None,
                        help="rerun only this part and merge it into the results file NAME.json, keeping the rest")
    args = parser.parse_args()
    earlier = _earlier(args.name, args.only) if args.only else None
    with tempfile.TemporaryDirectory() as tmp:
        result = _measure(Path(tmp), args, earlier)
    record(args.name, result | {"met": met(result)})


def _shares(value: str) -> list[Share]:
    """``--small-episodes``: shares, comma-separated."""
    return [Share.parse(text) for text in value.split(",")]


def _measure(tmp: Path, args: argparse.Namespace, earlier: dict[str, Any] | None) -> dict[str, Any]:
    """Every part, or with ``--only`` that part merged into the ``earlier`` results; ``measured`` says when
    and on what code each part was measured, ``rerun`` which part this run measured alone."""
    now = _stamp()
    if earlier is None:
        return {"targets": TARGETS, "nav2d": nav2d(tmp, args), "pendulum": pendulum(tmp, args),
                "measured": {part: now for part in PARTS}, "rerun": None}
    nav, pend = earlier["nav2d"], earlier["pendulum"]
    if args.only == "model_error":
        nav = nav | {"model_error": model_error(tmp, args)}
    elif args.only == "prior":
        model, policy, _ = nav2d_policy(tmp, args)
        nav = nav | {"prior": prior_rows(model, policy, args)}
    else:
        pend = pendulum(tmp, args)
    return {"targets": TARGETS, "nav2d": nav, "pendulum": pend,
            "measured": earlier["measured"] | {args.only: now}, "rerun": args.only}


def _stamp() -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%d", time.gmtime()), "git_commit": machine()["git_commit"]}


def _earlier(name: str, only: str) -> dict[str, Any]:
    """The parts of an earlier ``NAME.json`` and when and on what code each was measured (results from
    before ``measured`` existed: ``nav2d_measured`` for Nav2D, the file's own stamp for Pendulum).
    Raises if there is none."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"--only {only} merges into {path}, which does not exist: run the whole benchmark first")
    old = json.loads(path.read_text())
    own = {"date": old.get("date"), "git_commit": (old.get("machine") or {}).get("git_commit")}
    nav = old.get("nav2d_measured") or own
    measured = old.get("measured") or {"nav2d": nav, "model_error": nav, "pendulum": own}
    return {"nav2d": old["nav2d"], "pendulum": old["pendulum"], "measured": measured}


if __name__ == "__main__":
    main()
