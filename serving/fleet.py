"""A fleet of simulated agents driving closed loop through the fleet endpoint, in one asyncio process.

Each agent steps its own env at ``FleetConfig.hz``: every tick it sends its observation with the
reward of its previous action, the observation's step index ``t`` and ``prev_action`` (the action
it executed), and acts on the answer. Agents start staggered over one period so the endpoint sees
a steady stream rather than bursts. When an episode ends, the next tick reports the final
observation with ``terminated``/``truncated``; the env is then reset and the next request (t 0,
reward None) starts a new episode. A failed request counts as an error and the agent takes a zero
action, which its next request reports as ``prev_action``: the server logs what the agent did, not
an answer it never got. Over HTTP each agent talks through its own ``AgentLink`` (a lean keep-alive
HTTP/1.1 connection with the clients' retries and errors), so the fleet takes little of the CPU it
shares with the endpoint it measures; over the fleet bus (``FleetConfig.transport`` 'redis') the
agents share one ``AsyncStreamClient``, as a fleet gateway would. Latency is measured the same way
on both: from the request's sending to its answer read.

Its settings, result and samples are ``serving.fleet_config``'s. Used by `wm fleet`, `wm demo` and
``benchmarks/serve_fleet.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, TypeVar

import gymnasium
import numpy as np

from serving.client import ClientStats, FleetClientError, RetryPolicy, plan_body
from serving.fleet_config import AgentTrack, FleetConfig, FleetResult, FleetTrace
from serving.link import AgentLink
from serving.stream_client import AsyncStreamClient
from worldmodel.envs import NAV2D_ID, make_env
from worldmodel.envs.nav2d import GOAL_DIMS, POS_DIMS

PROGRESS_EVERY_S = 5.0
"""Seconds between progress lines."""
T = TypeVar("T")
Send = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
"""A plan body -> its answer; raises ``FleetClientError``."""


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


@dataclass
class Tally:
    """Counters every agent adds to (one event loop, so no locks)."""

    start: float
    latency_ms: list[float] = field(default_factory=list)
    sent_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    versions: set[str] = field(default_factory=set)
    episodes: int = 0
    successes: int = 0
    violations: int = 0
    violators: int = 0
    late: int = 0

    def answered(self, answer: dict[str, Any]) -> None:
        if answer["fallback"]:
            self.fallbacks[answer.get("fallback_reason") or "unknown"] += 1
        self.versions.add(answer["model_version"])

    def timed(self, sent: float, answered: float) -> None:
        self.sent_s.append(sent - self.start)
        self.latency_ms.append((answered - sent) * 1000)

    def ended(self, success: bool, violations: int) -> None:
        self.episodes += 1
        self.successes += success
        self.violators += violations > 0

    def result(self, config: FleetConfig, elapsed: float, retries: int) -> FleetResult:
        requests = len(self.latency_ms)
        return FleetResult(
            agents=config.agents, hz=config.hz, seconds=round(elapsed, 3), requests=requests,
            rate_hz=requests / elapsed, rate_per_agent_hz=requests / elapsed / config.agents,
            latency_ms=latency_summary(self.latency_ms), late_ticks=self.late, episodes=self.episodes,
            success_rate=self.successes / self.episodes if self.episodes else 0.0, violations=self.violations,
            episodes_with_violation=self.violators, fallbacks=sum(self.fallbacks.values()),
            fallbacks_by_reason=dict(self.fallbacks), errors=sum(self.errors.values()),
            errors_by_kind=dict(self.errors), retries=retries, model_versions=sorted(self.versions))


@dataclass
class _Episode:
    """One agent's episode so far: what its next request reports."""

    obs: np.ndarray
    """(S,) the observation to send, or a camera agent's (H, W, C) uint8 frame."""
    info: dict[str, Any]
    objective: dict[str, Any]
    """Sent with every request: the name and the episode's no-fly zones, fixed until a reset."""
    t: int = 0
    """Step index of ``obs`` in the episode."""
    reward: float | None = None
    prev_action: np.ndarray | None = None
    """(A,) the action the agent executed after the previous observation (None at t 0)."""
    terminated: bool = False
    truncated: bool = False
    violations: int = 0

    @property
    def ended(self) -> bool:
        return self.terminated or self.truncated


@dataclass
class _Track:
    """A kept agent's first episode while it runs."""

    xy: list[np.ndarray] = field(default_factory=list)
    goal: np.ndarray | None = None
    zones: np.ndarray | None = None
    success: bool = False
    closed: bool = False

    def see(self, ep: _Episode) -> None:
        if self.goal is None:
            self.goal, self.zones = ep.obs[GOAL_DIMS].copy(), _zones(ep.info)
        if not self.closed:
            self.xy.append(ep.obs[POS_DIMS].copy())
            self.closed = ep.ended


@dataclass
class _Agent:
    """One simulated agent: its id, env, line to the endpoint and (for a few) its first episode's track."""

    agent_id: str
    env: gymnasium.Env
    send: Send
    track: _Track | None

    def start(self, objective: str, seed: int | None = None) -> _Episode:
        obs, info = self.env.reset(seed=seed)
        return _Episode(obs, info, _objective(objective, info))


async def drive_fleet(config: FleetConfig, progress: Callable[[str], None] | None = None,
                      trace: FleetTrace | None = None) -> FleetResult:
    """Drive ``config.agents`` envs closed loop through the endpoint (``config.target``) for ``config.seconds``.

    Rates and latencies are those of requests sent within ``seconds``. Episodes are those started
    within it: an episode under way at the end is driven on to its end (untimed) and counted, so
    failures, which last until the time limit, are not undercounted (one that meets an error past
    the end is dropped). With ``drain=False`` the run stops at the end and counts only the episodes
    ended by then.

    Args:
        config: the run's settings.
        progress: called with a line every few seconds.
        trace: filled with every request's latency and a few agents' first episodes.

    Returns:
        The run's ``FleetResult``.
    """
    prefix = config.agent_prefix if config.agent_prefix is not None else f"fleet-{uuid.uuid4().hex[:8]}-"
    env_kwargs = {"num_no_fly_zones": config.no_fly_zones} if config.no_fly_zones else {}
    keep = 0 if trace is None or config.env_id != NAV2D_ID else trace.track_agents
    async with agent_lines(config) as (sends, stats):
        agents = [_Agent(f"{prefix}{i:04d}", make_env(config.env_id, **env_kwargs), send,
                         _Track() if i < keep else None) for i, send in enumerate(sends)]
        tally = Tally(start=time.perf_counter())
        reporter = asyncio.create_task(report_progress(tally, config.seconds, progress)) if progress else None
        try:
            async with asyncio.TaskGroup() as group:
                for i, agent in enumerate(agents):
                    group.create_task(_drive_agent(config, tally, agent, i))
        finally:
            if reporter is not None:
                reporter.cancel()
            for agent in agents:
                agent.env.close()
    elapsed = min(time.perf_counter() - tally.start, config.seconds)  # the timed part
    if trace is not None:
        trace.sent_s.extend(tally.sent_s)
        trace.latency_ms.extend(tally.latency_ms)
        trace.tracks.extend(AgentTrack(np.asarray(a.track.xy), a.track.goal, a.track.zones, a.track.success)
                            for a in agents if a.track is not None and a.track.xy)
    return tally.result(config, elapsed, stats.retries)


@contextlib.asynccontextmanager
async def agent_lines(config: FleetConfig) -> AsyncIterator[tuple[list[Send], ClientStats]]:
    """Each agent's line to the endpoint, and the stats counting their calls: over HTTP an ``AgentLink`` per
    agent; over the bus one ``AsyncStreamClient`` for them all (one process, two connections)."""
    if config.transport == "redis":
        client = AsyncStreamClient(config.redis_url, prefix=config.bus_prefix,  # type: ignore[arg-type]
                                   timeout_s=config.timeout_s, retries=config.retries)
        try:
            yield [client.send] * config.agents, client.stats
        finally:
            await client.close()
        return
    policy = RetryPolicy(config.url, config.token, config.timeout_s, config.retries)  # type: ignore[arg-type]
    links = [AgentLink(policy) for _ in range(config.agents)]
    try:
        yield [functools.partial(link.post, "/v1/plan") for link in links], policy.stats
    finally:
        for link in links:
            link.close()


async def _drive_agent(config: FleetConfig, tally: Tally, agent: _Agent, i: int) -> None:
    """Agent i's loop: each tick it sends its observation and acts on the answer, until the run is over."""
    ep = agent.start(config.objective, seed=config.seed + i)
    zero = np.zeros(agent.env.action_space.shape, np.float32)
    end = tally.start + config.seconds
    tick = tally.start + i * config.period_s / config.agents  # staggered over one period
    while True:
        await asyncio.sleep(max(0.0, tick - time.perf_counter()))
        sent = time.perf_counter()
        timed = sent < end
        if not timed and (ep.t == 0 or not config.drain):  # past the end, no new episode starts
            return
        body = _body(config, agent.agent_id, ep)
        try:
            answer = await agent.send(body)
        except FleetClientError as err:
            if not timed:  # an episode finished past the end must be served to count: leave it
                return
            tally.errors[err.kind] += 1
            answer = None
        else:
            tally.answered(answer)
        now = time.perf_counter()
        if timed:
            tally.timed(sent, now)
        if agent.track is not None:
            agent.track.see(ep)
        action = zero if answer is None else np.asarray(answer["action"], np.float32)
        ep = agent.start(config.objective) if ep.ended else _step(agent, ep, action, tally)
        tick += config.period_s
        if tick < now:  # too late for the ticks in between: skip them, stay on this agent's grid
            missed = math.ceil((now - tick) / config.period_s)
            tally.late += missed if timed else 0
            tick += missed * config.period_s


def _body(config: FleetConfig, agent_id: str, ep: _Episode) -> dict[str, Any]:
    """This tick's plan request. A camera agent's (H, W, C) frame goes as ``image``: raw bytes over the fleet
    bus (their own stream field), base64 over HTTP; it asks for the learned reward alone, since a latent model
    has no positions for the episode's zones to constrain (it learned to avoid them from the breach flag)."""
    camera = np.ndim(ep.obs) == 3
    body = plan_body(agent_id, np.zeros(1, np.float32) if camera else ep.obs, reward=ep.reward,
                     terminated=ep.terminated, truncated=ep.truncated, objective=None if camera else ep.objective,
                     deadline_ms=config.deadline_ms, t=ep.t, prev_action=ep.prev_action)
    if camera:
        del body["observation"]
        frame = np.ascontiguousarray(ep.obs, np.uint8).tobytes()
        body["image"] = frame if config.transport == "redis" else base64.b64encode(frame).decode()
    return body


def _step(agent: _Agent, ep: _Episode, action: np.ndarray, tally: Tally) -> _Episode:
    """The agent executes ``action`` (A,): the episode one step on, with the action it will report."""
    obs, reward, terminated, truncated, info = agent.env.step(action)
    violated = bool(info.get("violation", False))
    tally.violations += violated
    nxt = _Episode(obs, info, ep.objective, t=ep.t + 1, reward=float(reward), prev_action=action,
                   terminated=terminated, truncated=truncated, violations=ep.violations + violated)
    if nxt.ended:
        success = bool(info.get("is_success", False))
        tally.ended(success, nxt.violations)
        if agent.track is not None and not agent.track.closed:
            agent.track.success = success
    return nxt


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


async def report_progress(t: Tally, seconds: float, progress: Callable[[str], None]) -> None:
    """Every few seconds, a progress line: requests, rate, recent p99, episodes, errors."""
    seen = 0
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        now = time.perf_counter() - t.start
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
