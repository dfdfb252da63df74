"""Ray Tune sweeps over the world model's settings, scored as a retrain is: on the most recent episodes.

The driver reads the logs once (``learners.retrain.read_held_out``: Ray Data, then the recent
holdout split) and every trial gets both splits from the object store (``tune.with_parameters``).
A trial trains with the core's ``train_world_model`` on the older episodes, scores the model on
the held-out ones with ``holdout_score`` (the learner's promotion score, lower is better), and
reports the score with its artifact as the trial's checkpoint, which Tune persists under the run
directory.

The holdout score needs every stage trained (dynamics, then reward, then termination), so it exists
only at a trial's end. What can be compared earlier is the dynamics fit's validation loss: a trial
reports it after every dynamics epoch, and by default Tune's ASHA (asynchronous successive halving)
stops trials whose loss trails the others' at the same epoch, so a sweep spends its time on the
promising settings. A stopped trial leaves no model; ``SweepResult.stopped`` lists it.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.sample import Categorical, Domain

from actors.common import gpus_per_worker
from learners.retrain import HeldOutLogs, register_candidate, registered_run, run_id_for
from tune.space import DEFAULT_SPACE, GRACE_EPOCHS, HOLDOUT_FRACTION, SAMPLES, SCHEDULER, SCHEDULERS, Choice, LogUniform
from worldmodel.artifact import load_model, save_model
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.holdout import holdout_score
from worldmodel.registry import ModelRegistry
from worldmodel.registry_records import VersionInfo
from worldmodel.training import train_world_model

SCORE = "score"
"""The metric trials report and the sweep minimises: ``holdout_score``'s score (0 is perfect)."""
EARLY_METRIC = "dynamics_val_loss"
"""What ASHA compares between trials at the same epoch: the dynamics fit's validation loss (lower is better)."""
ASHA_REDUCTION = 3
"""ASHA keeps about one trial in this many at each rung (epochs grace, 3 x grace, 9 x grace, ...)."""
MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig))
TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig)) - {"device"}
"""A trial's device follows the resources Tune gives it ('auto'), so it is not a setting to sweep."""


class SweepFailed(RuntimeError):
    """Trials of a sweep failed; the message names how many and the first one's error."""


def to_domain(domain: Choice | LogUniform) -> Domain:
    """A plain ``tune.space`` domain as Ray Tune's."""
    if isinstance(domain, Choice):
        return tune.choice(list(domain.values))
    return tune.loguniform(domain.lower, domain.upper)


def default_space() -> dict[str, Any]:
    """``tune.space.DEFAULT_SPACE`` as Ray Tune domains: the settings a sweep varies unless told otherwise."""
    return {name: to_domain(domain) for name, domain in DEFAULT_SPACE.items()}


def _values_to_check(value: Any) -> list[Any]:
    """Values of a space entry that can be checked before sampling (a range's lower bound stands for it)."""
    if isinstance(value, Categorical):
        return list(value.categories)
    if isinstance(value, dict) and "grid_search" in value:
        return list(value["grid_search"])
    if isinstance(value, Domain):
        lower = getattr(value, "lower", None)
        return [] if lower is None else [lower]
    return [value]


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep tries: a search space over the model's and training's settings, and how many trials."""

    samples: int = SAMPLES
    """Trials to run (Tune's ``num_samples``), each with settings drawn from ``space``."""
    space: Mapping[str, Any] = field(default_factory=default_space)
    """Setting (a ``ModelConfig`` or ``TrainConfig`` field) -> a ``ray.tune`` domain (``tune.choice``) or a value."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model settings ``space`` leaves alone."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The training settings ``space`` leaves alone; its ``seed`` also seeds the search."""
    holdout_fraction: float = HOLDOUT_FRACTION
    """Share of the most recent episodes held out for scoring, in (0, 1)."""
    scheduler: str = SCHEDULER
    """One of ``SCHEDULERS``: 'asha' stops trials whose dynamics validation loss trails the others' at
    the same epoch, once they have run ``grace_epochs``; 'fifo' runs every trial to its end."""
    grace_epochs: int = GRACE_EPOCHS
    """Dynamics epochs every trial runs before ASHA may stop it."""
    concurrent_trials: int = 0
    """Trials running at once; 0: as many as the cluster's resources allow (each takes one CPU, and a GPU
    where there is one)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.samples, int) and self.samples >= 1):
            raise ValueError(f"samples must be an integer >= 1, got {self.samples!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if not (isinstance(self.grace_epochs, int) and 1 <= self.grace_epochs):
            raise ValueError(f"grace_epochs must be an integer >= 1, got {self.grace_epochs!r}")
        if not (isinstance(self.concurrent_trials, int) and self.concurrent_trials >= 0):
            raise ValueError(f"concurrent_trials must be an integer >= 0, got {self.concurrent_trials!r}")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if not self.space:
            raise ValueError("the search space is empty: name at least one setting to vary")
        unknown = sorted(set(self.space) - MODEL_FIELDS - TRAIN_FIELDS)
        if unknown:
            raise ValueError(f"search space: unknown setting(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(MODEL_FIELDS | TRAIN_FIELDS))}")
        # Each drawn value is checked with the space's fixed values applied (settings that must agree).
        fixed = {k: v for k, v in self.space.items() if not isinstance(v, (Domain, dict))}
        for name, value in self.space.items():
            for candidate in _values_to_check(value):
                try:
                    self.configs({**fixed, name: candidate})
                except ValueError as err:
                    raise ValueError(f"search space {name}={candidate!r}: {err}") from None

    @property
    def trials(self) -> int:
        """Trials Tune creates: ``samples`` of every combination of the space's grid searches."""
        grids = [len(v["grid_search"]) for v in self.space.values() if isinstance(v, dict) and "grid_search" in v]
        return self.samples * math.prod(grids)

    def configs(self, settings: Mapping[str, Any]) -> tuple[ModelConfig, TrainConfig]:
        """The model and training configs of one trial: ``model`` and ``train`` with ``settings`` applied.

        Raises:
            ValueError: a setting the configs refuse (named by the config's own check).
        """
        model = {k: v for k, v in settings.items() if k in MODEL_FIELDS}
        train = {k: v for k, v in settings.items() if k in TRAIN_FIELDS}
        return dataclasses.replace(self.model, **model), dataclasses.replace(self.train, **train)


@dataclass(frozen=True)
class TrialResult:
    """One trial: its settings, its holdout score and where its model is."""

    trial_id: str
    """Tune's id of the trial."""
    config: dict[str, Any]
    """The settings it drew: the search space's keys and their values."""
    score: float
    """Holdout score (``dynamics_nmse + reward_nmse``); lower is better."""
    dynamics_nmse: float
    """Mean over changing state dimensions of 1 - R^2 of the state change, on the holdout."""
    reward_nmse: float
    """Reward MSE over the reward's variance, on the holdout."""
    seconds: float
    """Wall time of the trial's training and scoring, s."""
    artifact_dir: str
    """Its model artifact (the trial's Tune checkpoint), which ``worldmodel.artifact.load_model`` reads."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StoppedTrial:
    """A trial the scheduler stopped early: it trailed the others' dynamics validation loss, and left no model."""

    trial_id: str
    config: dict[str, Any]
    epochs: int
    """Dynamics epochs it ran."""
    dynamics_val_loss: float
    """Its dynamics validation loss after its last epoch."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SweepResult:
    """What a sweep found."""

    run_dir: str
    """The run's directory (Tune's experiment directory): one sub-directory per trial."""
    trials: tuple[TrialResult, ...]
    """Every trial that ran to its end, in the order Tune created them."""
    seconds: float
    """Wall time of the whole sweep, reading the logs included, s."""
    stopped: tuple[StoppedTrial, ...] = ()
    """Trials the scheduler stopped early, in the order Tune created them."""

    @property
    def best(self) -> TrialResult:
        """The trial with the lowest holdout score."""
        return min(self.trials, key=lambda t: t.score)

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "seconds": self.seconds, "best": self.best.to_dict(),
                "trials": [t.to_dict() for t in self.trials], "stopped": [t.to_dict() for t in self.stopped]}


def _run_trial(settings: dict[str, Any], *, logs: HeldOutLogs, sweep: SweepConfig) -> None:
    """One trial (runs in a Tune worker): train on the older episodes, score on the newest, report with the artifact."""
    start = time.perf_counter()
    model_cfg, train_cfg = sweep.configs(settings)

    def report_epoch(stage: str, epoch: int, val_loss: float) -> None:
        if stage == "dynamics":  # a report per epoch, which the scheduler may answer by stopping the trial
            tune.report({EARLY_METRIC: val_loss, "epoch": epoch})

    model = train_world_model(logs.train, logs.spec, model_cfg, train_cfg, on_epoch=report_epoch)
    model.data_fingerprint = logs.fingerprint
    scored = holdout_score(model, logs.holdout)
    # Tune copies the checkpoint into the trial's directory under the run before report returns. The final
    # report carries the dynamics fit's best validation loss too (Tune wants the scheduler's metric in every
    # result); should the scheduler stop the trial on it, the trial has finished and its model is kept.
    with tempfile.TemporaryDirectory() as tmp:
        artifact = save_model(model, Path(tmp) / "model")
        dynamics_fit = model.metrics["dynamics"]["fit"]
        tune.report({SCORE: scored["score"], "dynamics_nmse": scored["dynamics_nmse"],
                     EARLY_METRIC: dynamics_fit["best_val_loss"], "epoch": dynamics_fit["epochs"],
                     "reward_nmse": scored["reward_nmse"], "seconds": round(time.perf_counter() - start, 3)},
                    checkpoint=tune.Checkpoint.from_directory(artifact))


class TrialProgress(tune.Callback):
    """One line per trial that ends (runs in the driver): ``line(config, last result)`` says what it did."""

    def __init__(self, say: Callable[[str], None], trials: int,
                 line: Callable[[dict[str, Any], dict[str, Any]], str]) -> None:
        self.say, self.trials, self.line, self.done = say, trials, line, 0

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.done += 1
        self.say(f"trial {self.done}/{self.trials}: {self.line(trial.config, trial.last_result or {})}")


def _trial_line(config: dict[str, Any], result: dict[str, Any]) -> str:
    """A world-model trial: scored, or stopped early."""
    settings = ", ".join(f"{k}={format_setting(v)}" for k, v in sorted(config.items()))
    if SCORE in result:
        return f"score {result[SCORE]:.4f} in {result['seconds']:.1f} s ({settings})"
    return (f"stopped early after {result.get('epoch', 0)} dynamics epochs "
            f"(validation loss {result.get(EARLY_METRIC, float('nan')):.4f}) ({settings})")


def format_setting(value: Any) -> str:
    """A setting's value as progress lines and tables show it (floats to 3 significant digits)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def run_sweep(logs: HeldOutLogs, sweep: SweepConfig, out_dir: str, *, name: str | None = None,
              say: Callable[[str], None] = lambda message: None) -> SweepResult:
    """Run ``sweep.samples`` trials on ``logs`` with Ray Tune (Ray must be initialised: ``cluster.runtime.init_ray``).

    Each trial takes one CPU, and one GPU when the cluster has one (``gpus_per_worker``). With
    ``sweep.scheduler`` 'asha', trials that trail the others' dynamics validation loss at the same
    epoch are stopped (``SweepResult.stopped``).

    Args:
        logs: the logs read once by the driver (``learners.retrain.read_held_out``).
        sweep: the search space, the trial count and the fixed settings.
        out_dir: where runs go, a directory (on a multi-node cluster a shared mount, as every trial writes
            its artifact there and the driver reads the best one back); this run is ``out_dir/name``.
        name: the run's name (default: ``sweep-<UTC time>-<random>``).
        say: called with one line of progress per finished trial.

    Raises:
        SweepFailed: a trial failed (the first failure is the cause), or none ran to its end.
    """
    start = time.perf_counter()
    name = name or f"sweep-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    trainable = tune.with_resources(tune.with_parameters(_run_trial, logs=logs, sweep=sweep),
                                    {"cpu": 1, "gpu": gpus_per_worker()})
    scheduler = None
    if sweep.scheduler == "asha":
        # A trial reports once per dynamics epoch and once at its end: at most epochs + 1 reports.
        max_t = sweep.train.epochs + 1
        scheduler = ASHAScheduler(time_attr="training_iteration", metric=EARLY_METRIC, mode="min", max_t=max_t,
                                  grace_period=min(sweep.grace_epochs, max_t), reduction_factor=ASHA_REDUCTION)
    tuner = tune.Tuner(
        trainable, param_space=dict(sweep.space),
        # No metric here: the scheduler compares EARLY_METRIC, and the best is chosen by SCORE below.
        tune_config=tune.TuneConfig(num_samples=sweep.samples, scheduler=scheduler,
                                    search_alg=BasicVariantGenerator(random_state=sweep.train.seed,
                                                                     max_concurrent=sweep.concurrent_trials)),
        # verbose=0: no progress table from Tune (its lines would repeat TrialProgress's).
        run_config=tune.RunConfig(name=name, storage_path=str(Path(out_dir).expanduser().absolute()), verbose=0,
                                  callbacks=[TrialProgress(say, sweep.trials, _trial_line)]))
    grid = tuner.fit()
    if grid.errors:
        raise SweepFailed(f"{len(grid.errors)} of {sweep.trials} trials failed; the first: "
                           f"{str(grid.errors[0]).strip().splitlines()[-1]}") from grid.errors[0]
    finished = [r for r in grid if SCORE in r.metrics]
    if not finished:
        raise SweepFailed(f"none of {sweep.trials} trials ran to its end")
    trials = tuple(TrialResult(trial_id=r.metrics["trial_id"], config=dict(r.config), score=r.metrics[SCORE],
                               dynamics_nmse=r.metrics["dynamics_nmse"], reward_nmse=r.metrics["reward_nmse"],
                               seconds=r.metrics["seconds"], artifact_dir=r.checkpoint.path)
                   for r in finished)
    stopped = tuple(StoppedTrial(trial_id=r.metrics["trial_id"], config=dict(r.config), epochs=r.metrics["epoch"],
                                 dynamics_val_loss=r.metrics[EARLY_METRIC])
                    for r in grid if SCORE not in r.metrics)
    return SweepResult(run_dir=grid.experiment_path, trials=trials, seconds=round(time.perf_counter() - start, 3),
                       stopped=stopped)


def register_best(result: SweepResult, logs: HeldOutLogs, sweep: SweepConfig,
                  registry_uri: str) -> tuple[VersionInfo, bool]:
    """Register the best trial's model in ``registry_uri`` as a candidate, as the learner registers a retrain.

    It is scored against production on the same holdout (``register_candidate``); its lineage is a
    retrain's (the data, the holdout, the run id ``run_id_for`` gives its settings) plus the sweep's
    run directory, the trial and its settings. When a run with the same data and settings is
    registered already (by a sweep or the learner), that version is returned instead of a second one.

    Returns:
        ``(version, existing)``: the version's record, and whether it had been registered before.
    """
    best = result.best
    model_cfg, train_cfg = sweep.configs(best.config)
    run_id = run_id_for(logs.fingerprint, model_cfg, train_cfg, logs.holdout_fraction)
    registry = ModelRegistry(registry_uri)
    done = registered_run(registry, run_id)
    if done is not None:
        return done, True
    sweep_lineage = {"run_dir": result.run_dir, "trial_id": best.trial_id, "settings": best.config,
                     "trials": len(result.trials)}
    return register_candidate(registry, load_model(best.artifact_dir), logs, run_id=run_id, sweep=sweep_lineage), False
