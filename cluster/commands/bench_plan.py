"""`wm bench plan`'s measurements: plans/s, latency, FLOPs per plan and the matmul peak (torch).

Shapes: ``N`` agents, ``K`` samples, ``H`` horizon, ``E`` members, ``P`` particles, ``S`` state.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np
import torch

from cluster.commands.bench import REFERENCE_CFG, parse_agents
from cluster.commands.plan import plan_config, planner_settings
from planners import PLANNERS, BasePlanner, GradientPlanner, Objective, PlanConfig, make_planner, resolved_settings
from planners.objectives import LearnedReward
from worldmodel import native
from worldmodel.artifact import load_model
from worldmodel.device import resolve_device
from worldmodel.dynamics import DeterministicDynamics, ProbabilisticEnsemble
from worldmodel.reward import RewardModel

NAV2D_OBS, NAV2D_ACT = 6, 2
"""Sizes of the untrained model when no --model is given (Nav2D's)."""


def rollout_flops(cfg: PlanConfig, members: int, dynamics_flops: int, reward_flops: int,
                  iterations: float | None = None) -> float:
    """FLOPs of one agent's rollouts in one plan, counted from layer sizes (matmuls only):
    iterations x K x P x H x (E_eval x dynamics + reward), where E_eval is 1 in the sampled modes
    (each particle row is evaluated by one member) and E for 'expectation' (which has no particles)."""
    iterations = cfg.iterations if iterations is None else iterations
    e_eval, p = (members, 1) if cfg.propagation == "expectation" else (1, cfg.particles)
    return iterations * cfg.samples * p * cfg.horizon * (e_eval * dynamics_flops + reward_flops)


def plan_flops(planner: str, cfg: PlanConfig, members: int, dynamics_flops: int, reward_flops: int,
               iterations: float | None = None) -> float:
    """FLOPs of one plan for one agent, counted from layer sizes (matmuls only): the rollouts (the
    gradient planner's backward pass costs about 2x their forward), then the audit, the chosen plan
    rolled out once through every member (H x E x dynamics)."""
    search = rollout_flops(cfg, members, dynamics_flops, reward_flops, iterations)
    if planner == "gradient":
        search *= 3
    return search + cfg.horizon * members * dynamics_flops


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_gflops(fn: Callable[[], Any], flops: float, device: torch.device, trials: int = 3,
                 min_s: float = 0.05) -> float:
    """Best GFLOP/s of ``fn`` over a few trials, each long enough to time."""
    fn()
    _sync(device)
    reps, best = 1, 0.0
    for _ in range(trials):
        while True:
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            _sync(device)
            seconds = time.perf_counter() - start
            if seconds >= min_s:
                break
            reps *= 2
        best = max(best, flops * reps / seconds / 1e9)
    return best


def matmul_peak(device: torch.device, members: int) -> dict[str, float]:
    """GFLOP/s of a batched (E, 8192, 64) x (E, 64, 64) matmul and a 2048^2 square one; 'peak' is the best."""
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(shape, generator=gen, device=device) for shape in ((members, 8192, 64), (members, 64, 64)))
    x, y = (torch.randn(2048, 2048, generator=gen, device=device) for _ in range(2))
    out = {"bmm_E_8192_64_64": _best_gflops(lambda: torch.bmm(a, b), 2 * members * 8192 * 64 * 64, device),
           "square_2048": _best_gflops(lambda: x @ y, 2 * 2048**3, device)}
    return {**{k: round(v, 2) for k, v in out.items()}, "peak": round(max(out.values()), 2)}


def _time_plans(planner: BasePlanner, n: int, obs_dim: int, repeats: int, seed: int) -> dict[str, Any]:
    """Warm up once, then time ``repeats`` calls on random obs (N, S)."""
    device = planner.device
    gen = torch.Generator(device=device).manual_seed(seed)
    batches = [torch.randn(n, obs_dim, generator=gen, device=device) for _ in range(repeats + 1)]
    planner.plan(batches[0])
    ms, rollout_ms, iterations, fallbacks = [], [], [], []
    for obs in batches[1:]:
        _sync(device)
        start = time.perf_counter()
        result = planner.plan(obs)
        _sync(device)
        ms.append((time.perf_counter() - start) * 1000)
        rollout_ms.append(result.rollout_ms)
        iterations.append(result.iterations)
        fallbacks.append(result.fallback.float().mean().item())
    # The mean call: under a budget calls differ in work, and FLOPs are counted from the mean iterations.
    return {"seconds": float(np.mean(ms)) / 1000, "rollout_seconds": float(np.mean(rollout_ms)) / 1000,
            "ms_p50": float(np.percentile(ms, 50)), "ms_p99": float(np.percentile(ms, 99)),
            "iterations": float(np.mean(iterations)), "fallback_fraction": float(np.mean(fallbacks))}



def measure_reference(repeats: int, seed: int) -> dict[str, Any]:
    """The article's planner on one CPU core, one agent per call."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        dynamics = DeterministicDynamics(NAV2D_OBS, NAV2D_ACT, members=1, hidden=64, layers=2)
        reward = RewardModel(NAV2D_OBS, NAV2D_ACT, hidden=64, layers=2)
        bound = torch.ones(NAV2D_ACT)
        planner = GradientPlanner(dynamics, Objective([LearnedReward(reward)]), -bound, bound, REFERENCE_CFG)
        timing = _time_plans(planner, 1, NAV2D_OBS, repeats, seed)
    finally:
        torch.set_num_threads(threads)
    flops = plan_flops("gradient", REFERENCE_CFG, 1, dynamics.flops_per_sample(), reward.flops_per_sample())
    plans_per_s = 1 / timing["seconds"]
    return {"description": "gradient MPC, 1 x 64x2 deterministic MLP + 64x2 reward, H 15, 1 restart, "
                           "Adam lr 0.1, 10 iterations, 1 agent per call, 1 CPU thread",
            "device": "cpu", "threads": 1, "plans_per_s": plans_per_s, "plans_per_s_per_core": plans_per_s,
            "ms_p50": timing["ms_p50"], "ms_p99": timing["ms_p99"], "flops_per_plan": flops,
            "gflops": flops / timing["seconds"] / 1e9}


def _load(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, RewardModel, torch.Tensor,
                                                                  torch.Tensor, dict[str, Any]]:
    """Dynamics, reward, action bounds (A,) x 2 and a description of the model."""
    if args.model is not None:
        model = load_model(args.model, device)
        if not hasattr(model.dynamics, "flops_per_sample"):
            raise ValueError(f"{args.model}: {model.model_config.dynamics!r} dynamics cannot be FLOP-counted; "
                             f"bench plan supports ensemble and mlp models")
        low, high = (torch.tensor(b, device=device) for b in (model.spec.act_low, model.spec.act_high))
        return model.dynamics, model.reward, low, high, {"model": args.model, **model.model_config.to_dict()}
    torch.manual_seed(args.seed)
    # Untrained: throughput does not depend on the weights; the normalisers stay the identity.
    dynamics = ProbabilisticEnsemble(NAV2D_OBS, NAV2D_ACT, args.ensemble_size, args.hidden, args.layers).to(device)
    reward = RewardModel(NAV2D_OBS, NAV2D_ACT, args.hidden, args.layers, members=1).to(device)
    bound = torch.ones(NAV2D_ACT, device=device)
    return dynamics, reward, -bound, bound, {"model": None, "dynamics": "ensemble", "hidden": args.hidden,
                                             "layers": args.layers, "ensemble_size": args.ensemble_size}


def run_bench_plan(args: argparse.Namespace) -> dict[str, Any]:
    if args.planner not in PLANNERS:
        raise ValueError(f"unknown planner {args.planner!r}; choose one of {', '.join(PLANNERS)}")
    agents = parse_agents(args.agents)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    own = planner_settings(args)
    cfg = plan_config(args)
    device = resolve_device("auto")
    dynamics, reward, low, high, model_info = _load(args, device)
    members, obs_dim = dynamics.members, dynamics.obs_dim
    objective = Objective([LearnedReward(reward)])
    threads = torch.get_num_threads()
    peak = matmul_peak(device, members)
    reference = measure_reference(args.repeats, args.seed)
    rows = []
    for n in agents:
        planner = make_planner(args.planner, dynamics, objective, low, high, cfg,  # fresh budget estimate per N
                               settings=own)
        timing = _time_plans(planner, n, obs_dim, args.repeats, args.seed)
        flops = n * plan_flops(args.planner, cfg, members, dynamics.flops_per_sample(), reward.flops_per_sample(),
                               timing["iterations"])
        plans_per_s = n / timing["seconds"]
        gflops = flops / timing["seconds"] / 1e9
        # The rollouts alone: their forward FLOPs over the time spent in them (PlanResult.rollout_ms).
        rollout_gflops = n * rollout_flops(cfg, members, dynamics.flops_per_sample(), reward.flops_per_sample(),
                                           timing["iterations"]) / max(timing["rollout_seconds"], 1e-9) / 1e9
        row = {"agents": n, "plans_per_s": plans_per_s, "plans_per_s_per_core": plans_per_s / threads,
               "ms_p50": timing["ms_p50"], "ms_p99": timing["ms_p99"], "flops_per_plan": flops / n,
               "gflops": gflops, "fraction_of_peak": gflops / peak["peak"],
               "rollout_ms": timing["rollout_seconds"] * 1000, "rollout_gflops": rollout_gflops,
               "rollout_fraction_of_peak": rollout_gflops / peak["peak"],
               "speedup_vs_reference": plans_per_s / threads / reference["plans_per_s_per_core"],
               "iterations_mean": timing["iterations"]}
        if args.budget_ms is not None:
            row["fallback_fraction"] = timing["fallback_fraction"]
        rows.append(row)
    settings = {**{k: getattr(cfg, k) for k in ("horizon", "samples", "iterations", "particles", "propagation",
                                               "budget_ms", "seed")},
                **model_info, "obs_dim": obs_dim, "repeats": args.repeats,
                "planner_settings": resolved_settings(args.planner, own)}
    result = {"command": "bench plan", "planner": args.planner, "settings": settings, "device": str(device),
              "threads": threads, "native": native.status(), "peak_gflops": peak, "reference": reference,
              "rows": rows}
    result["_summary"] = _summary(result)
    return result


def _summary(result: dict[str, Any]) -> list[str]:
    s, ref, peak = result["settings"], result["reference"], result["peak_gflops"]
    budget = result["rows"] and "fallback_fraction" in result["rows"][0]
    lines = [f"{result['planner']} on {result['device']} ({result['threads']} threads): H {s['horizon']}, "
             f"K {s['samples']}, {s['iterations']} iterations, P {s['particles']} {s['propagation']}"
             + (f", budget {s['budget_ms']} ms" if budget else ""),
             f"matmul peak {peak['peak']:.1f} GFLOP/s (bmm {peak['bmm_E_8192_64_64']:.1f}, "
             f"square {peak['square_2048']:.1f}); article reference {ref['plans_per_s']:.1f} plans/s on 1 core",
             f"native kernel: {result['native']}",
             f"{'agents':>7} {'plans/s':>10} {'/core':>9} {'p50 ms':>8} {'p99 ms':>8} {'GFLOP/s':>8} "
             f"{'of peak':>7} {'rollouts':>8} {'vs ref':>7}" + (f" {'fallback':>8}" if budget else "")]
    for r in result["rows"]:
        lines.append(f"{r['agents']:>7} {r['plans_per_s']:>10.1f} {r['plans_per_s_per_core']:>9.1f} "
                     f"{r['ms_p50']:>8.2f} {r['ms_p99']:>8.2f} {r['gflops']:>8.2f} {r['fraction_of_peak']:>7.1%} "
                     f"{r['rollout_fraction_of_peak']:>8.1%} {r['speedup_vs_reference']:>6.1f}x"
                     + (f" {r['fallback_fraction']:>8.1%}" if budget else ""))
    return lines
