"""The fleet bus's stream and group names: one place, importable without numpy or pyarrow (clients use it)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BUS", "BusNames"]


@dataclass(frozen=True)
class BusNames:
    """The fleet bus's stream and group names, all under one prefix (two apps on one Redis use two prefixes)."""

    prefix: str = "fleetwm"

    @property
    def telemetry(self) -> str:
        """Transitions from agents that plan on the edge and from the serving engine, read by the ingest group."""
        return f"{self.prefix}:telemetry"

    @property
    def telemetry_dead_letters(self) -> str:
        """Telemetry entries no consumer can log, each with the reason, the original id and its payload."""
        return f"{self.prefix}:telemetry:dead"

    @property
    def ingest_group(self) -> str:
        """The consumer group of the telemetry loggers."""
        return f"{self.prefix}-ingest"

    @property
    def requests(self) -> str:
        """Plan requests from agents (or fleet gateways), read by the planners' group."""
        return f"{self.prefix}:plan"

    @property
    def request_dead_letters(self) -> str:
        """Plan requests that cannot be planned (not JSON, invalid), each with the reason."""
        return f"{self.prefix}:plan:dead"

    @property
    def plan_group(self) -> str:
        """The consumer group of the fleet endpoint's stream consumers."""
        return f"{self.prefix}-planners"

    def reply(self, agent_id: str) -> str:
        """Where the answers to ``agent_id``'s requests go (bounded, expiring)."""
        return f"{self.prefix}:reply:{agent_id}"


BUS = BusNames()
"""The default names."""
