"""Retraining on a cron schedule: a detached actor that wakes at each fire time and runs a learner.

The scheduler outlives the driver that started it (``lifetime="detached"``), so
``wm learn --schedule`` can start it on a cluster and exit. It is also the one place the serving
engines' drift watches ask for a retrain (``drift``, ``learners.drift``): it rate-limits those across
every replica. Every run, scheduled, manual or for drift, is recorded with its trigger, start, end and
result or error; a failed run is logged and recorded, and the schedule goes on. Fire times are in UTC.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import inspect
import logging
import time
from typing import Any

import ray
from ray.actor import ActorHandle

from actors.common import NAMESPACE, find_actor
from learners.cron import next_fire, parse
from learners.drift import (NOT_PRODUCTION, STARTED, TRIGGER_DRIFT, TRIGGER_MANUAL, TRIGGER_SCHEDULE, DriftAnswer,
                            DriftCause, DriftGate, iso)
from learners.learner import start_learner
from learners.settings import DEFAULT_CHECKPOINT_ROOT, DEFAULT_NAME, DriftSettings
from worldmodel.registry import ModelRegistry


log = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _iso(t: datetime.datetime | None) -> str | None:
    return None if t is None else t.isoformat(timespec="seconds")


class RetrainScheduler:
    """Calls ``Learner.retrain`` at every fire time of a cron expression (hosted as an async Ray actor)."""

    def __init__(self, cron: str, data_uri: str, registry_uri: str, *, promote: bool = False,
                 checkpoint_root: str = DEFAULT_CHECKPOINT_ROOT, model_cfg: dict[str, Any] | None = None,
                 train_cfg: dict[str, Any] | None = None, holdout_fraction: float = 0.2, keep: int = 50,
                 drift_min_interval_s: float = DriftSettings.min_interval_s) -> None:
        """
        Args:
            cron: five-field cron expression (see ``learners.cron``), in UTC.
            data_uri / registry_uri / promote / model_cfg / train_cfg / holdout_fraction: passed to every
                ``Learner.retrain``.
            checkpoint_root: the learner's checkpoint directory.
            keep: how many past runs ``status`` reports.
            drift_min_interval_s: at most one drift retrain per this many seconds (``DriftSettings``).
        """
        self.cron_text, self.cron = cron, parse(cron)
        self.data_uri, self.registry_uri, self.checkpoint_root = data_uri, registry_uri, checkpoint_root
        self.retrain_kwargs = {"model_cfg": model_cfg, "train_cfg": train_cfg,
                               "holdout_fraction": holdout_fraction, "promote": promote}
        self.runs: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self.created = _now()
        self.next_fire: datetime.datetime | None = None
        self.loop_error: str | None = None
        self.drift_gate = DriftGate(drift_min_interval_s)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._learner: ActorHandle | None = None
        self._loop: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        # The loop starts as soon as the actor's event loop runs, so a scheduler that Ray restarted
        # (after its node died) fires again without anyone calling it.
        asyncio.get_event_loop().call_soon(self._start)

    async def status(self) -> dict[str, Any]:
        """The schedule, the next fire time, whether a run is in progress, and the recent runs (oldest first)."""
        self._start()
        return {"cron": self.cron_text, "data_uri": self.data_uri, "registry_uri": self.registry_uri,
                "promote": self.retrain_kwargs["promote"], "created": _iso(self.created),
                "next_fire": _iso(self.next_fire), "running": bool(self._lock and self._lock.locked()),
                "loop_error": self.loop_error, "drift_min_interval_s": self.drift_gate.min_interval_s,
                "last_drift_retrain": None if self.drift_gate.last_start is None else iso(self.drift_gate.last_start),
                "runs": list(self.runs)}

    async def run_now(self) -> dict[str, Any]:
        """Retrain now (after any run in progress); returns the run's record."""
        self._start()
        return await self._run({"kind": TRIGGER_MANUAL})

    async def drift(self, cause: DriftCause) -> DriftAnswer:
        """Start a retrain for ``cause`` unless a retrain runs, one started less than ``drift_min_interval_s``
        ago, or ``cause.version`` is not the registry's production version; answers at once (the retrain
        runs on, recorded in ``status`` with its cause)."""
        self._start()
        assert self._lock is not None
        refusal = self.drift_gate.refusal(time.time(), self._lock.locked())
        if refusal is None:
            production = await asyncio.to_thread(lambda: ModelRegistry(self.registry_uri).production())
            if production is None or production.version != cause.version:
                refusal = DriftAnswer(NOT_PRODUCTION, f"{cause.version} is not production "
                                                      f"({production.version if production else 'none'} is)")
            else:  # again: a scheduled run may have taken the lock during the registry read
                refusal = self.drift_gate.refusal(time.time(), self._lock.locked())
        if refusal is not None:
            log.warning("drift retrain for %s refused: %s", cause.version, refusal.detail)
            return refusal
        self.drift_gate.started(time.time())
        trigger = cause.to_trigger()
        task = asyncio.get_running_loop().create_task(self._run(trigger))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.warning("drift retrain of %s started: windowed prediction MSE %.4g above %.4g since %s",
                    cause.version, cause.mse, cause.threshold, trigger["since"])
        return DriftAnswer(STARTED, f"retraining {self.data_uri} for the drift of {cause.version}")

    def _start(self) -> None:
        # Runs inside the actor's event loop (scheduled by the constructor, which runs before it).
        if self._loop is None:
            self._lock = asyncio.Lock()
            self._loop = asyncio.get_running_loop().create_task(self._every_fire_time())
            self._loop.add_done_callback(self._loop_ended)

    async def _every_fire_time(self) -> None:
        while True:
            self.next_fire = next_fire(self.cron, _now())
            # Sleep in slices so a suspended machine or clock step cannot make it oversleep by much.
            while (wait := (self.next_fire - _now()).total_seconds()) > 0:
                await asyncio.sleep(min(wait, 60.0))
            await self._run({"kind": TRIGGER_SCHEDULE})

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.loop_error = f"{type(task.exception()).__name__}: {task.exception()}"
            log.error("retrain schedule %r stopped: %s", self.cron_text, self.loop_error)

    async def _run(self, trigger: dict[str, Any]) -> dict[str, Any]:
        """One retrain, after any in progress; ``trigger`` goes into the registered version's lineage."""
        assert self._lock is not None
        async with self._lock:
            record: dict[str, Any] = {"trigger": trigger["kind"], "start": _iso(_now()), "end": None,
                                      "seconds": None, "result": None, "error": None}
            if trigger["kind"] == TRIGGER_DRIFT:
                record["cause"] = trigger
            self.runs.append(record)
            start = time.perf_counter()
            try:
                if self._learner is None:
                    self._learner = start_learner(checkpoint_root=self.checkpoint_root)
                record["result"] = await self._learner.retrain.remote(self.data_uri, self.registry_uri,
                                                                      trigger=trigger, **self.retrain_kwargs)
            except Exception as err:  # recorded in status() and logged; the schedule goes on
                record["error"] = f"{type(err).__name__}: {err}"
                log.error("%s retrain of %s failed: %s", trigger["kind"], self.data_uri, record["error"])
            finally:
                record["end"], record["seconds"] = _iso(_now()), round(time.perf_counter() - start, 3)
            return record


def start_scheduler(cron: str, data_uri: str, registry_uri: str, *, name: str = DEFAULT_NAME,
                    replace_timeout_s: float = 30.0, **retrain: Any) -> ActorHandle:
    """Start the detached scheduler ``name`` in fleetwm's namespace, replacing one of that name.

    Args:
        cron: five-field cron expression, in UTC; checked here before anything is replaced.
        data_uri / registry_uri / retrain: what each run retrains; ``retrain`` takes the rest of
            ``RetrainScheduler``'s arguments (``promote``, ``checkpoint_root``, ``model_cfg``, ...).
        name: the actor's name (one schedule per name).
        replace_timeout_s: how long to wait for a replaced scheduler to release its name.

    Returns:
        The scheduler's handle, already running (its first ``status`` has been answered).
    """
    parse(cron)
    # A misnamed argument fails here, before the old scheduler is replaced.
    inspect.signature(RetrainScheduler).bind(cron, data_uri, registry_uri, **retrain)
    old = find_actor(name)
    if old is not None:
        ray.kill(old, no_restart=True)
        deadline = time.monotonic() + replace_timeout_s
        while find_actor(name) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the old scheduler {name!r} still holds its name after {replace_timeout_s} s")
            time.sleep(0.1)
    remote = ray.remote(RetrainScheduler).options(name=name, namespace=NAMESPACE, lifetime="detached", num_cpus=0,
                                                  max_restarts=-1)
    handle = remote.remote(cron, data_uri, registry_uri, **retrain)
    ray.get(handle.status.remote())
    return handle
