"""Settings of the fleet endpoint, one frozen object that travels to every deployment as a dict."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

from actors.redis_server import shown_url
from actors.state import StateConfig
from learners.settings import DriftSettings

TOKEN_ENV = "FLEETWM_API_TOKEN"
"""Environment variable holding the bearer token (kept out of configs shown in the dashboard)."""
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
"""RFC 6750's b64token: ASCII only, so the token's bytes are the same however a header is decoded."""


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
"""How a Redis URL starts (redis-py's ``from_url``)."""

BATCHING = {"max_batch_size": 256, "batch_wait_timeout_s": 0.002}
"""The ingress's ``@serve.batch`` knobs by default (``AppConfig.batching``, ``wm serve``'s flags)."""


@dataclass(frozen=True)
class AppConfig:
    """What to serve and how."""

    model: str
    """Model directory, or with ``registry_uri`` a version or stage ('production' follows promotions)."""
    registry_uri: str | None = None
    """Model registry (directory or URI)."""
    shadow: str | None = None
    """Version or stage planned in the background on the same requests (e.g. 'shadow'); None: off."""
    ab: bool = False
    """Deploy the live A/B candidate planner (``serving.ab_planner``; needs ``registry_uri``): while the registry
    has an A/B test (`wm models ab`), its share of the agents is served by its version. Off: no test is served."""
    log_uri: str | None = None
    """Where served transitions are appended as Arrow logs; None: telemetry off."""
    token: str | None = None
    """Bearer token required on every API call (default: $FLEETWM_API_TOKEN, else none)."""
    state: StateConfig = field(default_factory=StateConfig)
    """Agent-state shards."""
    service: dict[str, Any] = field(default_factory=dict)
    """Planner settings (``ServiceConfig`` fields)."""
    batching: dict[str, Any] = field(default_factory=lambda: dict(BATCHING))
    """``@serve.batch`` knobs, the ingress's ``user_config`` (change them without a redeploy)."""
    max_ongoing_requests: int = 2048
    """Requests one ingress replica holds at once: at least the batch size, or batches stay small."""
    default_deadline_ms: float | None = 100.0
    """Deadline for requests that do not give one, in ms from the request's arrival at the ingress (None:
    none). Planning gets what is left of it (less a few ms for the state write and the answer), so a
    cycle that waited its turn plans fewer rounds, or none: the agent then gets the fallback action with
    ``fallback_reason`` 'deadline' instead of a late answer. 100 ms is the control period of the
    README's fleet (10 Hz): an answer later than that is of no use to the agent, and the default model
    and planner at that load (100 agents, a planner call of ~20 ms within a ~40 ms cycle) finish well
    inside it, so the deadline only acts when planning falls behind (a larger model, an overload)."""
    poll_s: float = 1.0
    """How often a planner following a registry stage checks for a new version."""
    planner_cpus: float = 1.0
    ingress_cpus: float = 0.5
    planner_autoscaling: dict[str, Any] = field(default_factory=lambda: {
        "min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 2})
    """Planner replicas scale on queued batches; raise max_replicas on a cluster with more workers."""
    ingress_autoscaling: dict[str, Any] = field(default_factory=lambda: {
        "min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 512})
    redis_url: str | None = None
    """The fleet bus (``redis://[:PASSWORD@]host:port/db``): streaming control through ``serving.stream_consumer``
    and served transitions through the telemetry stream, so a logger crash loses none. None: HTTP only,
    transitions through the logger actor's memory. A password here is in the app's config, which Ray's
    dashboard shows to whoever holds the cluster's Ray token; `wm serve` prints the URL without it."""
    bus_prefix: str = "fleetwm"
    """Prefix of the bus's stream and group names (``actors.streams.BusNames``): two apps on one Redis differ."""
    consumer_replicas: int = 1
    """Stream consumer replicas; together they form one consumer group."""
    claim_idle_ms: int = 1000
    """A request pending this long at a consumer replica (a dead one's) is claimed by another: more than ten
    cycles at fleet load, so a live replica's requests are not planned twice."""
    read_count: int = 256
    """Requests a consumer takes per read (``XREADGROUP COUNT``)."""
    drift: DriftSettings = field(default_factory=DriftSettings)
    """When a sustained rise of the production version's prediction MSE asks the retrain scheduler for a retrain."""
    telemetry_name: str = "fleetwm-telemetry"
    """Name of the telemetry logger actor."""
    access_log: bool | None = None
    """Serve's line per request in the replica logs. None leaves it to Serve (the application's
    ``logging_config``; on unless set there); True or False sets it on both deployments, which then take
    no ``logging_config`` from the application. `wm serve` and the demo turn it off: at 100 agents
    writing it cost 5% of the requests/s. Latency and status counts are in the metrics either way."""

    def __post_init__(self) -> None:
        if self.token:
            _check_token(self.token, "token")
        if not self.model:
            raise ValueError("model must name a model directory, version or stage")
        size = self.batching.get("max_batch_size", 1)
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"batching.max_batch_size must be an integer >= 1, got {size!r}")
        if self.max_ongoing_requests < size:
            raise ValueError(f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= "
                             f"max_batch_size ({size}), or batches can never fill")
        if self.redis_url is not None and not self.redis_url.startswith(REDIS_SCHEMES):
            raise ValueError(f"redis_url must start with {', '.join(REDIS_SCHEMES)}, got {shown_url(self.redis_url)!r}")
        if not self.bus_prefix or any(c.isspace() for c in self.bus_prefix):
            raise ValueError(f"bus_prefix must be a non-empty name without spaces, got {self.bus_prefix!r}")
        for name in ("consumer_replicas", "claim_idle_ms", "read_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.ab and not self.registry_uri:
            raise ValueError("ab (the live A/B candidate planner) follows a registry's A/B test: give registry_uri")
        if self.default_deadline_ms is not None and self.default_deadline_ms <= 0:
            raise ValueError(f"default_deadline_ms must be > 0, got {self.default_deadline_ms}")

    @property
    def bearer_token(self) -> str | None:
        """``token``, else ``$FLEETWM_API_TOKEN``, else None (no token required).

        Raises:
            ValueError: the environment's token is not a valid bearer token.
        """
        if self.token:
            return self.token
        token = os.environ.get(TOKEN_ENV) or None
        return None if token is None else _check_token(token, f"${TOKEN_ENV}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AppConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fleetwm app setting(s) {unknown}; known: {sorted(known)}")
        data = dict(data)
        if isinstance(data.get("state"), dict):
            data["state"] = StateConfig(**data["state"])
        if isinstance(data.get("drift"), dict):
            data["drift"] = DriftSettings.from_dict(data["drift"])
        return cls(**data)


def _check_token(token: str, source: str) -> str:
    if not TOKEN_PATTERN.fullmatch(token):
        raise ValueError(f"{source}: a bearer token is letters, digits and - . _ ~ + / (then any '='), "
                         "as RFC 6750 defines it")
    return token
