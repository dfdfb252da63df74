"""The records of a model registry's index that callers read: a version (``VersionInfo``) and the live A/B
test (``ABTest``); ``worldmodel.registry`` writes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VECTOR = "vector"
"""A version whose artifact is a vector world model (``worldmodel.artifact``)."""
LATENT = "latent"
"""A version whose artifact is a latent (camera) world model (``worldmodel.latent_artifact``)."""
KINDS = (VECTOR, LATENT)


@dataclass(frozen=True)
class VersionInfo:
    """One version's record in the index."""

    version: str
    """Semantic version "MAJOR.MINOR.PATCH", assigned by the registry."""
    stage: str
    """One of STAGES."""
    created: str
    """ISO time (UTC) of registration."""
    parent: str | None
    """The production version this one was trained to replace (lineage), or None."""
    data_fingerprint: str
    """Fingerprint ("sha256:...") of the training logs."""
    metrics: dict[str, Any]
    """The model's training metrics."""
    holdout: dict[str, Any] | None
    """Comparison on a shared holdout (lower score is better) with a "better" flag, or None."""
    lineage: dict[str, Any]
    """Free-form provenance: data URI, rows, train config..."""
    kind: str = VECTOR
    """One of KINDS: what its artifact holds (records from before kinds are vector models)."""

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "stage": self.stage, "created": self.created, "parent": self.parent,
                "data_fingerprint": self.data_fingerprint, "metrics": self.metrics, "holdout": self.holdout,
                "lineage": self.lineage, "kind": self.kind}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "VersionInfo":
        """The public fields of an index record (which also keeps the configs used for numbering)."""
        return cls(**{k: record[k] for k in ("version", "stage", "created", "parent", "data_fingerprint",
                                             "metrics", "holdout", "lineage")}, kind=record.get("kind", VECTOR))


@dataclass(frozen=True)
class ABTest:
    """The running live A/B test: ``share`` of the agents are served by ``version`` (``serving.ab``)."""

    id: str
    """Names this test's live statistics; a new test (another version) gets a new one, a new share keeps it."""
    version: str
    """The candidate version."""
    share: float
    """Share of the agents (by a stable hash of agent id, or of site) it serves, in (0, 1)."""
    started: str
    """ISO time (UTC) the test started."""
    production: str | None
    """The production version when it started."""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "share": self.share, "started": self.started,
                "production": self.production}
