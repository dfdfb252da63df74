"""What a simulated fleet run drives and what it measures: its settings, result and raw samples.

Plain data with no torch, Ray, HTTP or Redis library, so `wm fleet --help` reads its defaults from
``FleetConfig`` without loading the driver (``serving.fleet``); the timeout and retries default to the
clients' (``serving.link.RETRY``).

Dimensions: ``T`` requests of one agent's episode, ``Z`` no-fly zones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from planners.config import OBJECTIVES
from serving.link import HTTP_SCHEMES, REDIS_SCHEMES, RETRY
from worldmodel.envs import NAV2D_ID
from worldmodel.envs.warehouse import DEFAULT_ROBOTS, WAREHOUSE_ID

if TYPE_CHECKING:
    import numpy as np

TRANSPORTS = ("http", "redis")
"""How the agents reach the endpoint: HTTP's ``POST /v1/plan``, or the fleet bus (Redis Streams)."""


@dataclass(frozen=True)
class FleetConfig:
    """What a fleet run drives, and how; checked at construction."""

    url: str | None = None
    """Base URL of the fleet endpoint (or of any server of API v1's ``POST /v1/plan``); required over HTTP."""
    agents: int = 10
    """N simulated agents, each stepping its own env."""
    hz: float = 10.0
    """Each agent's control rate (requests per second)."""
    seconds: float = 30.0
    """How long to drive; rates and latencies are those of the requests sent within it."""
    env_id: str = NAV2D_ID
    """Gymnasium id of the agents' env."""
    no_fly_zones: int = 0
    """Nav2D's zones per episode (0: off); each episode's zones go in its objective."""
    objective: str = "learned"
    """Objective name sent with every request: 'learned' or 'goal' (Nav2D's goal reward)."""
    token: str | None = None
    """Bearer token of the endpoint over HTTP (None: send none); the bus authenticates in ``redis_url``."""
    deadline_ms: float | None = None
    """Planning deadline sent with every request (None: the server's default)."""
    seed: int = 0
    """Agent i's env is seeded with ``seed + i``."""
    timeout_s: float = RETRY.timeout_s
    """Per-attempt timeout of each request."""
    retries: int = RETRY.retries
    """Retries after a connection error, timeout or 5xx (a 4xx is final)."""
    agent_prefix: str | None = None
    """Agent ids are PREFIX0000, PREFIX0001, ...; None: 'fleet-<random>-', fresh per run."""
    drain: bool = True
    """Drive the episodes under way at the end on to their end (untimed) and count them; False: stop."""
    transport: str = "http"
    """'http': every agent POSTs to ``url`` on its own connection; 'redis': the agents share one
    ``serving.stream_client.AsyncStreamClient`` on ``redis_url``."""
    redis_url: str | None = None
    """The fleet bus, e.g. 'redis://127.0.0.1:6379/0'; required with transport 'redis', unused otherwise."""
    bus_prefix: str = "fleetwm"
    """Name prefix of the bus's streams: the serving app's ``AppConfig.bus_prefix``."""
    batch: bool = False
    """Warehouse-v1 over HTTP: each tick's robots as one ``POST /v1/plan/batch``; False: one request per robot
    (the engine plans a site's robots that arrive together jointly either way)."""
    floor_robots: int = DEFAULT_ROBOTS
    """Warehouse-v1: the floor is ``layout_for(floor_robots)``, the one the endpoint serves (`wm serve --robots`);
    ``agents`` robots drive on it."""

    def __post_init__(self) -> None:
        checks = [
            *self._transport_checks(),
            (self.agents >= 1, f"agents must be >= 1, got {self.agents}"),
            (self.hz > 0, f"hz must be > 0, got {self.hz}"),
            (self.seconds > 0, f"seconds must be > 0, got {self.seconds}"),
            (self.no_fly_zones >= 0, f"no_fly_zones must be >= 0, got {self.no_fly_zones}"),
            (not self.no_fly_zones or self.env_id == NAV2D_ID,
             f"no-fly zones exist in {NAV2D_ID} only, not {self.env_id}"),
            (self.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"),
            (self.deadline_ms is None or self.deadline_ms > 0, f"deadline_ms must be > 0, got {self.deadline_ms}"),
            (self.timeout_s > 0, f"timeout_s must be > 0, got {self.timeout_s}"),
            (self.retries >= 0, f"retries must be >= 0, got {self.retries}"),
            (self.floor_robots >= 1, f"floor_robots must be >= 1, got {self.floor_robots}"),
            (not self.batch or (self.env_id == WAREHOUSE_ID and self.transport == "http"),
             f"batch sends a {WAREHOUSE_ID} floor's tick over http; got {self.env_id} over {self.transport}"),
        ]
        wrong = [message for ok, message in checks if not ok]
        if wrong:
            raise ValueError(f"fleet settings: {'; '.join(wrong)}")

    def _transport_checks(self) -> list[tuple[bool, str]]:
        if self.transport not in TRANSPORTS:
            return [(False, f"transport must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}")]
        redis = self.transport == "redis"
        return [
            (redis or self.url is not None, "url is required with transport 'http'"),
            (self.url is None or self.url.startswith(HTTP_SCHEMES),
             f"url must start with http(s)://, got {self.url!r}"),
            (not redis or self.redis_url is not None, "redis_url is required with transport 'redis'"),
            (self.redis_url is None or self.redis_url.startswith(REDIS_SCHEMES),
             f"redis_url must start with {', '.join(REDIS_SCHEMES)}, got {self.redis_url!r}"),
        ]

    @property
    def target(self) -> str:
        """Where the agents' requests go, in words."""
        return f"the bus at {self.redis_url}" if self.transport == "redis" else str(self.url)

    @property
    def period_s(self) -> float:
        """Seconds between an agent's ticks."""
        return 1.0 / self.hz


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
    fallbacks_by_reason: dict[str, int]
    """Those answers by the server's ``fallback_reason`` ('deadline', 'uncertainty', 'error')."""
    errors: int
    """Failed requests (each made its agent take a zero action)."""
    errors_by_kind: dict[str, int]
    """Failed requests by kind: 'http_<status>', 'timeout', 'connection'."""
    retries: int
    """HTTP retries the client made (a retry that then succeeded is not an error)."""
    model_versions: list[str]
    """Model versions that answered."""
    floor: FloorCounts | None = None
    """Warehouse-v1: what the floor counted (None for lone agents)."""


@dataclass(frozen=True)
class FloorCounts:
    """What a warehouse floor driven through the endpoint counted (``planners.warehouse_eval``'s measures)."""

    ticks: int
    """Floor steps of 1 / hz seconds taken within the run."""
    collisions_per_robot_hour: float
    """Robot-robot and robot-human contacts per robot and hour of floor time."""
    shelf_collisions: int
    """Shelf and wall contacts, all robots."""
    deliveries_per_hour: float
    """The floor's throughput."""
    shielded: int
    """Answers whose action the server's shield replaced."""


@dataclass(frozen=True)
class AgentTrack:
    """One agent's first episode in Nav2D, for plots."""

    xy: np.ndarray
    """(T, 2) positions, one per request."""
    goal: np.ndarray
    """(2,) the goal."""
    zones: np.ndarray
    """(Z, 3) no-fly zones (x, y, r)."""
    success: bool
    """The goal was reached within the run."""


@dataclass
class FleetTrace:
    """Raw samples of a run, for plots: pass one to ``drive_fleet`` and it is filled in."""

    track_agents: int = 6
    """How many agents' first episodes to keep."""
    sent_s: list[float] = field(default_factory=list)
    """Each request's send time, seconds since the fleet started."""
    latency_ms: list[float] = field(default_factory=list)
    """Each request's latency, in the order of ``sent_s``."""
    tracks: list[AgentTrack] = field(default_factory=list)
    """Nav2D: the kept agents' first episodes."""
