"""A fleet of simulated agents driving closed loop through the fleet endpoint, in one asyncio process.

Each agent steps its own env at ``hz``: every tick it sends its observation (with the reward
of its previous action) and acts on the answer. Agents start staggered over one period so the
endpoint sees a steady stream rather than bursts. When an episode ends, the next tick reports
the final observation with ``done``/``truncated``; the env is then reset and the next
request (reward None) starts a new episode. A failed request counts as an error and the agent
takes a zero action. Each agent talks through its own ``AgentLink`` (a lean keep-alive HTTP/1.1
connection with the clients' retries and errors), so the fleet takes little of the CPU it shares
with the endpoint it measures.

Used by `wm fleet`, `wm demo` and ``benchmarks/serve_fleet.py``.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, TypeVar

import numpy as np

from serving.client import FleetClientError, RetryPolicy, plan_body
from serving.link import AgentLink
from worldmodel.envs import NAV2D_ID, make_env

PROGRESS_EVERY_S = 5.0
"""Seconds between progress lines."""

T = TypeVar("T")


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` (a fleet driver) to completion on uvloop where it is installed (ray[serve] brings it
    with uvicorn), else on asyncio's own loop: the simulated fleet shares the machine with the
    endpoint it drives, and uvloop's event loop spends less of it per request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    run = getattr(uvloop, "run", None)  # uvloop >= 0.18
    return run(coro) if run is not None else asyncio.run(coro)


@dataclass(frozen=True)
class FleetResult:
    """What a fleet run measured (latencies client-side, request sent to answer read, retries included)."""

    agents: int
    """N, agents driving at once."""
    hz: float
    """Control rate each agent asked for."""
    seconds: float
    """Wall seconds the fleet drove."""
    requests: int
    """Plan requests sent (answered or failed)."""
    rate_hz: float
    """Requests per second achieved, all agents together."""
    rate_per_agent_hz: float
    """Requests per second per agent (``hz`` when the endpoint keeps up)."""
    latency_ms: dict[str, float]
    """Percentiles p50, p95, p99, and mean and max, of every request's latency."""
    late_ticks: int
    """Ticks skipped because an answer came after the agent's next tick was due."""
    episodes: int
    """Episodes that ended (goal reached or time limit) during the run."""
    success_rate: float
    """Fraction of those that reached the goal (0 when none ended)."""
    violations: int
    """Steps spent inside a no-fly zone, over all steps taken."""
    episodes_with_violation: int
    """Ended episodes with at least one step inside a zone."""
    fallbacks: int
    """Answers whose action came from the server's fallback policy."""
    errors: int
    """Failed requests (each made its agent take a zero action)."""
    errors_by_kind: dict[str, int]
    """Failed requests by kind: 'http_<status>', 'timeout', 'connection'."""
    retries: int
    """HTTP retries the client made (a retry that then succeeded is not an error)."""
    model_versions: list[str]
    """Model versions that answered."""


@dataclass
class FleetTrace:
    """Raw samples of a run, for plots: pass one to ``drive_fleet`` and it is filled in."""

    track_agents: int = 6
    """How many agents' first episodes to keep."""
    sent_s: list[float] = field(default_factory=list)
    """Each request's send time, seconds since the fleet started."""
    latency_ms: list[float] = field(default_factory=list)
    """Each request's latency, in the order of ``sent_s``."""
    tracks: list[dict[str, Any]] = field(default_factory=list)
    """Nav2D: per kept agent {"xy": (T, 2), "goal": (2,), "zones": (Z, 3), "success": bool}."""


class _Tally:
    """Counters every agent adds to (one event loop, so no locks)."""

    def __init__(self) -> None:
        self.latency_ms: list[float] = []
        self.sent_s: list[float] = []
        self.errors: Counter[str] = Counter()
        self.versions: set[str] = set()
        self.episodes = self.successes = self.violations = self.violators = self.fallbacks = self.late = 0


async def drive_fleet(url: str, agents: int, hz: float, seconds: float, env_id: str = NAV2D_ID,
                      no_fly_zones: int = 0, objective: str = "learned", token: str | None = None,
                      deadline_ms: float | None = None, seed: int = 0,
                      progress: Callable[[str], None] | None = None, trace: FleetTrace | None = None,
                      timeout_s: float = 2.0, retries: int = 3, agent_prefix: str | None = None,
                      drain: bool = True) -> FleetResult:
    """Drive ``agents`` envs closed loop through the endpoint at ``url`` for ``seconds``.

    Rates and latencies are those of requests sent within ``seconds``. Episodes are those started
    within it: an episode under way at the end is driven on to its end (untimed) and counted, so
    failures, which last until the time limit, are not undercounted (one that meets an error past
    the end is dropped). ``drain=False`` stops at the end and counts only the episodes ended by then.

    Args:
        url: base URL of the fleet endpoint (or any server of API v1's ``POST /v1/plan``).
        agents: N simulated agents, each with its own env.
        hz: each agent's control rate (requests per second).
        seconds: how long to drive.
        env_id: gymnasium id of the agents' env.
        no_fly_zones: Nav2D zones per episode (0: off); each episode's zones go in the objective.
        objective: 'learned' or 'goal' (Nav2D's analytic goal reward).
        token: bearer token of the endpoint.
        deadline_ms: planning deadline sent with every request.
        seed: env seeds are ``seed + i`` for agent i.
        progress: called with a line every few seconds.
        trace: filled with every request's latency and a few agents' first episodes.
        timeout_s / retries: the client's per-attempt timeout and retries.
        agent_prefix: agent ids are PREFIX0000, PREFIX0001, ... (default: 'fleet-<random>-', fresh per run).
        drain: drive the episodes under way at the end on to their end (see above).

    Returns:
        The run's ``FleetResult``.
    """
    if agents < 1 or hz <= 0 or seconds <= 0:
        raise ValueError(f"need agents >= 1, hz > 0 and seconds > 0; got agents={agents}, hz={hz}, seconds={seconds}")
    if no_fly_zones and env_id != NAV2D_ID:
        raise ValueError(f"no-fly zones exist in {NAV2D_ID} only, not {env_id}")
    prefix = agent_prefix if agent_prefix is not None else f"fleet-{uuid.uuid4().hex[:8]}-"
    env_kwargs = {"num_no_fly_zones": no_fly_zones} if no_fly_zones else {}
    envs = [make_env(env_id, **env_kwargs) for _ in range(agents)]
    tally, period = _Tally(), 1.0 / hz
    keep = 0 if trace is None or env_id != NAV2D_ID else min(trace.track_agents, agents)
    tracks: list[dict[str, Any]] = [{"xy": [], "goal": None, "zones": None, "success": False, "closed": False}
                                   for _ in range(keep)]
    policy = RetryPolicy(url, token, timeout_s, retries)
    links = [AgentLink(policy) for _ in range(agents)]
    try:
        start = time.perf_counter()
        end = start + seconds

        async def agent(i: int) -> None:
            env = envs[i]
            obs, info = env.reset(seed=seed + i)
            wants = _objective(objective, info)  # the episode's objective and zones, fixed until a reset
            zero = np.zeros(env.action_space.shape, np.float32)
            reward: float | None = None
            done = trunc = False
            ep_violations, track = 0, tracks[i] if i < keep else None
            tick = start + i * period / agents  # staggered over one period
            fresh = True  # no request of the current episode sent yet
            while True:
                await asyncio.sleep(max(0.0, tick - time.perf_counter()))
                sent = time.perf_counter()
                timed = sent < end
                if not timed and (fresh or not drain):  # past the end, no new episode starts
                    return
                fresh = False
                action = zero
                try:
                    answer = await links[i].post("/v1/plan", plan_body(
                        f"{prefix}{i:04d}", obs, reward=reward, done=done, truncated=trunc, objective=wants,
                        deadline_ms=deadline_ms))
                    action = np.asarray(answer["action"], np.float32)
                    tally.fallbacks += bool(answer["fallback"])
                    tally.versions.add(answer["model_version"])
                except FleetClientError as err:
                    if not timed:  # an episode finished past the end must be served to count: leave it
                        return
                    tally.errors[err.kind] += 1
                now = time.perf_counter()
                if timed:
                    tally.sent_s.append(sent - start)
                    tally.latency_ms.append((now - sent) * 1000)
                if track is not None and track["goal"] is None:
                    track["goal"], track["zones"] = obs[4:6].copy(), _zones(info)
                if track is not None and not track["closed"]:
                    track["xy"].append(obs[:2].copy())
                    track["closed"] = done or trunc
                if done or trunc:  # the final observation is reported: start the next episode
                    obs, info = env.reset()
                    wants = _objective(objective, info)
                    reward, done, trunc, ep_violations, fresh = None, False, False, 0, True
                else:
                    obs, r, done, trunc, info = env.step(action)
                    reward = float(r)
                    ep_violations += bool(info.get("violation", False))
                    tally.violations += bool(info.get("violation", False))
                    if done or trunc:
                        tally.episodes += 1
                        success = bool(info.get("is_success", False))
                        tally.successes += success
                        tally.violators += ep_violations > 0
                        if track is not None and not track["closed"]:
                            track["success"] = success
                tick += period
                if tick < now:  # too late for the ticks in between: skip them, stay on this agent's grid
                    missed = math.ceil((now - tick) / period)
                    tally.late += missed if timed else 0
                    tick += missed * period

        reporter = asyncio.create_task(_report(tally, start, seconds, progress)) if progress else None
        try:
            async with asyncio.TaskGroup() as group:
                for i in range(agents):
                    group.create_task(agent(i))
        finally:
            if reporter is not None:
                reporter.cancel()
            for env in envs:
                env.close()
        elapsed = min(time.perf_counter() - start, seconds)  # the timed part
    finally:
        for link in links:
            link.close()
    retries_made = policy.stats.retries
    if trace is not None:
        trace.sent_s.extend(tally.sent_s)
        trace.latency_ms.extend(tally.latency_ms)
        trace.tracks.extend({"xy": np.asarray(t["xy"]), "goal": t["goal"], "zones": t["zones"],
                             "success": t["success"]} for t in tracks if t["xy"])
    return _result(tally, agents, hz, elapsed, retries_made)


def _objective(name: str, info: dict[str, Any]) -> dict[str, Any]:
    zones = _zones(info)
    return {"name": name, "no_fly_zones": zones} if len(zones) else {"name": name}


def _zones(info: dict[str, Any]) -> np.ndarray:
    """The episode's no-fly zones (Z, 3), (0, 3) when there are none."""
    return np.asarray(info.get("no_fly_zones", np.zeros((0, 3))), np.float64).reshape(-1, 3)


def latency_summary(latency_ms: list[float]) -> dict[str, float]:
    """p50, p95, p99, mean and max of latencies in ms (zeros when there are none)."""
    if not latency_ms:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0, "max": 0.0}
    ms = np.asarray(latency_ms)
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(ms.mean()), "max": float(ms.max())}


def _result(t: _Tally, agents: int, hz: float, elapsed: float, retries: int) -> FleetResult:
    requests = len(t.latency_ms)
    return FleetResult(
        agents=agents, hz=hz, seconds=round(elapsed, 3), requests=requests, rate_hz=requests / elapsed,
        rate_per_agent_hz=requests / elapsed / agents, latency_ms=latency_summary(t.latency_ms), late_ticks=t.late,
        episodes=t.episodes, success_rate=t.successes / t.episodes if t.episodes else 0.0,
        violations=t.violations, episodes_with_violation=t.violators, fallbacks=t.fallbacks,
        errors=sum(t.errors.values()), errors_by_kind=dict(t.errors), retries=retries,
        model_versions=sorted(t.versions))


async def _report(t: _Tally, start: float, seconds: float, progress: Callable[[str], None]) -> None:
    seen = 0
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        now = time.perf_counter() - start
        recent = t.latency_ms[seen:]
        seen = len(t.latency_ms)
        errors = sum(t.errors.values())
        if now > seconds:  # requests past the end drive the episodes under way to their end, untimed
            progress(f"fleet: {seconds:g} s done ({seen} requests, {seen / seconds:.0f}/s); finishing the episodes "
                     f"under way: {t.episodes} episodes ended, {errors} errors")
            continue
        p99 = float(np.percentile(recent, 99)) if recent else 0.0
        progress(f"fleet: {now:.0f}/{seconds:g} s, {seen} requests ({seen / now:.0f}/s), "
                 f"p99 {p99:.1f} ms over the last {PROGRESS_EVERY_S:g} s, {t.episodes} episodes, {errors} errors")
