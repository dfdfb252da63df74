"""Ray Tune sweeps over a policy's settings (``learners.settings.PolicySettings``) inside one world model.

Each trial trains a policy with PPO inside the model (``learners.policy_training.fit_policy``: the imagined
env, RLlib, the evaluations) with the model's preset and the trial's settings, and reports how the policy
does alone in the real env, as `wm policy train` scores it: the mean return under the planners' objective
(``SCORE``, higher is better; Nav2D: with its zones), its success rate and its steps in zones. The trial's
actor is its checkpoint; the sweep saves the best trial's in ``MODEL_DIR/policy`` as `wm policy train` saves
a policy (its own checksum, the next version in its lineage).

Trials run one at a time unless told otherwise: each runs RLlib in its own worker and PPO takes the cores it
is given.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from ray import tune

from learners.policy_training import PolicyResult, fit_policy, policy_preset, save_fitted
from learners.settings import PolicySettings
from tune.sweep import TrialProgress
from worldmodel.artifact import load_model

SCORE = "real_return"
"""What trials report and the sweep maximises: the policy's mean return alone in the real env."""
DEFAULT_POLICY_SPACE: dict[str, tuple[Any, ...]] = {"lr": (3e-4, 1e-3, 3e-3), "hidden": (32, 64, 128)}
"""Swept unless ``--space`` says otherwise: PPO's step size, and the policy's width (what serving pays per call)."""
_ACTOR = "actor.pt"
_FIELDS = frozenset(f.name for f in dataclasses.fields(PolicySettings)) - {"seed"}
"""Settings a sweep may vary (the seed is the sweep's own)."""


@dataclass(frozen=True)
class PolicySweep:
    """What to sweep: ``space`` maps ``PolicySettings`` fields to the values tried; every combination is a trial
    (``repeats`` times, seeded ``seed``, ``seed + 1``, ...); ``base`` overrides the model's preset for every trial."""

    model_dir: str
    data: str
    space: dict[str, tuple[Any, ...]]
    repeats: int = 1
    base: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    concurrent_trials: int = 1

    def __post_init__(self) -> None:
        unknown = sorted(set(self.space) - _FIELDS)
        if unknown:
            raise ValueError(f"policy sweep: {', '.join(unknown)} not a policy setting; one of "
                             f"{', '.join(sorted(_FIELDS))}")
        empty = [k for k, values in self.space.items() if not values]
        if empty or self.repeats < 1 or self.concurrent_trials < 1:
            raise ValueError(f"policy sweep: every key needs values (none for {empty}), repeats and concurrent "
                             f"trials >= 1 (got {self.repeats}, {self.concurrent_trials})")
        for key, values in self.space.items():  # a bad value fails here, before Ray starts
            for value in values:
                PolicySettings().with_overrides(**{key: value})


@dataclass(frozen=True)
class PolicyTrial:
    """One trial: its settings (the swept ones), and its policy's real-env score, or its error."""

    settings: dict[str, Any]
    score: float | None
    success_rate: float | None
    violations: int | None
    error: str | None = None


@dataclass(frozen=True)
class PolicySweepResult:
    trials: tuple[PolicyTrial, ...]
    best: PolicyTrial
    saved: PolicyResult
    """The best trial's policy, as saved in the model directory."""
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"trials": [vars(t) for t in self.trials], "best": vars(self.best), "policy": self.saved.to_dict(),
                "seconds": self.seconds}


def _trial(config: dict[str, Any], *, sweep: PolicySweep) -> None:
    settings = policy_preset(load_model(sweep.model_dir), **sweep.base).with_overrides(**config)
    actor, fitted = fit_policy(sweep.model_dir, sweep.data, settings, progress=lambda stats: None)
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"actor": actor, "fitted": fitted}, Path(folder, _ACTOR))
        tune.report({SCORE: fitted.real.mean_return, "success_rate": fitted.real.success_rate,
                     "violations": fitted.real.violations}, checkpoint=tune.Checkpoint.from_directory(folder))


def _trial_line(config: dict[str, Any], result: dict[str, Any]) -> str:
    success = result.get("success_rate")
    return (f"{config}: real return {result.get(SCORE, float('nan')):.1f}"
            + ("" if success is None else f", success {success:.1%}"))


def run_policy_sweep(sweep: PolicySweep, out_dir: str,
                     say: Callable[[str], None] = lambda m: None) -> PolicySweepResult:
    """Run the sweep (Ray initialised by the caller), save the best trial's policy in ``sweep.model_dir``.

    Raises:
        RuntimeError: every trial failed (the first one's error named).
    """
    start = time.perf_counter()
    space = {k: tune.grid_search(list(v)) for k, v in sweep.space.items()}
    space["seed"] = tune.grid_search([sweep.seed + i for i in range(sweep.repeats)])  # each repeat its own seed
    trials = sweep.repeats * math.prod(len(v) for v in sweep.space.values())
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, sweep=sweep), {"cpu": 1}), param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=sweep.concurrent_trials),
        run_config=tune.RunConfig(storage_path=str(Path(out_dir).expanduser().absolute()), verbose=0,
                                  callbacks=[TrialProgress(lambda m: say(f"policy sweep: {m}"), trials,
                                                           _trial_line)]))
    results = tuner.fit()
    trials_run = tuple(_trial_of(r) for r in results)
    scored = [r for r in results if r.error is None and r.metrics.get(SCORE) is not None]
    if not scored:
        raise RuntimeError(f"policy sweep: all {len(trials_run)} trials failed; the first: {trials_run[0].error}")
    best = max(scored, key=lambda r: r.metrics[SCORE])
    with best.checkpoint.as_directory() as folder:
        blob = torch.load(Path(folder, _ACTOR), weights_only=False)  # our own trial's pickle, in our run dir
    saved = save_fitted(sweep.model_dir, blob["actor"], blob["fitted"], start)
    return PolicySweepResult(trials=trials_run, best=_trial_of(best), saved=saved,
                             seconds=round(time.perf_counter() - start, 2))


def _trial_of(result: Any) -> PolicyTrial:
    metrics = result.metrics or {}
    config = {k: v for k, v in (result.config or {}).items()}
    return PolicyTrial(settings=config, score=metrics.get(SCORE), success_rate=metrics.get("success_rate"),
                       violations=metrics.get("violations"),
                       error=None if result.error is None else f"{type(result.error).__name__}: {result.error}"[:300])
