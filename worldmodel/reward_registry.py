"""A registry of reward models beside a world-model registry: ``<registry>/rewards/``.

Layout (the index and its lock are ``worldmodel.registry_store``'s)::

    rewards/registry.json       every reward version's record, and the history of registrations
    rewards/versions/r1.0.0/    a reward artifact exactly as ``worldmodel.reward_artifact.save_reward`` writes it

Reward versions have a lineage of their own ("r1.0.0", "r1.1.0", ...), independent of the world models':
a request or a fleet's config names one, and any world model whose spaces it fits plans with it. There are
no stages: what plans with a reward model is the name a request or a fleet's config gives.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from worldmodel.artifact import ArtifactError
from worldmodel.envs import SpaceSpec
from worldmodel.registry_store import RegistryError, RegistryStore
from worldmodel.reward_artifact import (VERSION_PREFIX, RewardArtifact, check_reward_version, load_reward,
                                        save_reward, verify_reward)

SUBDIR = "rewards"
"""The reward registry's directory inside a model registry."""


@dataclass(frozen=True)
class RewardInfo:
    """One reward version's record."""

    version: str
    """"rMAJOR.MINOR.PATCH", assigned by the registry."""
    created: str
    """ISO time (UTC) of registration."""
    parent: str | None
    """The reward version it was trained to replace, or None."""
    model_version: str
    """The world model version whose spaces it was fitted for ("" when none)."""
    spec: dict[str, Any]
    """The spaces it fits (``SpaceSpec.to_dict``)."""
    data_fingerprint: str
    """Fingerprint ("sha256:...") of the logs it was fitted on."""
    data_uri: str
    """Where those logs were."""
    metrics: dict[str, Any]
    """Its held-out metrics."""

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "created": self.created, "parent": self.parent,
                "model_version": self.model_version, "spec": self.spec, "data_fingerprint": self.data_fingerprint,
                "data_uri": self.data_uri, "metrics": self.metrics}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "RewardInfo":
        return cls(**{k: record[k] for k in ("version", "created", "parent", "model_version", "spec",
                                             "data_fingerprint", "data_uri", "metrics")})

    def fits(self, spec: SpaceSpec) -> bool:
        """Whether it reads ``spec``'s spaces (env, S and A: ``RewardArtifact.check_fits``)."""
        mine = self.spec
        return (mine["env_id"], mine["obs_dim"], mine["act_dim"]) == (spec.env_id, spec.obs_dim, spec.act_dim)


def _key(version: str) -> tuple[int, int, int]:
    major, minor, patch = check_reward_version(version)[len(VERSION_PREFIX):].split(".")
    return int(major), int(minor), int(patch)


class RewardRegistry:
    """Reward model versions of the registry at ``uri`` (kept under ``uri/rewards``)."""

    def __init__(self, uri: str, cache_dir: str | None = None) -> None:
        """
        Args:
            uri: the model registry: a local directory, or a URI pyarrow understands (``s3://``, ``file://``).
            cache_dir: where remote artifacts are downloaded (default: the model registry's cache).
        """
        self.uri = uri
        self.store = RegistryStore(f"{uri.rstrip('/')}/{SUBDIR}", cache_dir)

    def versions(self) -> list[RewardInfo]:
        """Every reward version, oldest lineage first (sorted by version)."""
        records = self.store.read()["versions"]
        return [RewardInfo.from_record(records[v]) for v in sorted(records, key=_key)]

    def get(self, ref: str) -> RewardInfo:
        """A version by name ("r1.2.0") or "latest".

        Raises:
            RegistryError: no such version (the message lists the known ones).
        """
        records = self.store.read()["versions"]
        if ref == "latest" and records:
            ref = max(records, key=_key)
        if ref not in records:
            known = ", ".join(sorted(records, key=_key)) or "none"
            raise RegistryError(f"unknown reward model {ref!r} in registry {self.uri}; registered: {known}")
        return RewardInfo.from_record(records[ref])

    def fitting(self, spec: SpaceSpec) -> list[str]:
        """The versions whose spaces are ``spec``'s (those a world model of ``spec`` can plan with)."""
        return [info.version for info in self.versions() if info.fits(spec)]

    def history(self) -> list[dict[str, Any]]:
        """Registrations, oldest first: time, action, version, parent."""
        return self.store.read()["history"]

    def reward_dir(self, ref: str) -> Path:
        """The local directory of a version's artifact; a remote one is downloaded and verified once."""
        version = self.get(ref).version
        if not self.store.remote:
            return Path(self.store.root) / "versions" / version
        final = self.store.cache_dir / version
        if not final.is_dir():
            self._download(version, final)
        return final

    def load(self, ref: str, device: str | torch.device = "cpu") -> RewardArtifact:
        """Load and verify a version (see ``get`` for ``ref``)."""
        return load_reward(self.reward_dir(ref), device)

    def register(self, artifact: RewardArtifact, parent: str | None = None) -> RewardInfo:
        """Store ``artifact`` as a new version; sets ``artifact.version`` (and ``parent``) to what it records.

        The first version is r1.0.0; later ones bump MINOR of the highest version when the spaces and the
        network config equal its own, MAJOR otherwise.

        Args:
            parent: the reward version it was trained to replace (default: ``artifact.parent``).

        Raises:
            RegistryError: ``parent`` is not registered.
        """
        parent = parent if parent is not None else artifact.parent
        config = json.loads(json.dumps({"spec": artifact.spec.to_dict(), "reward": artifact.config.to_dict()}))
        with self.store.lock():
            index = self.store.read()
            versions = index["versions"]
            if parent is not None and parent not in versions:
                self.get(parent)  # raises, naming the known versions
            version = self._next_version(versions, config)
            artifact.version, artifact.parent = version, parent
            now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            versions[version] = {"version": version, "created": now, "parent": parent,
                                 "model_version": artifact.model_version, "spec": config["spec"],
                                 "data_fingerprint": artifact.data_fingerprint, "data_uri": artifact.data_uri,
                                 "metrics": json.loads(json.dumps(artifact.metrics)), "config": config}
            index["history"].append({"time": now, "action": "register", "version": version, "parent": parent})
            self._store(artifact)
            self.store.write(index)  # indexed only once its artifact is complete
            return RewardInfo.from_record(versions[version])

    @staticmethod
    def _next_version(versions: dict[str, Any], config: dict[str, Any]) -> str:
        if not versions:
            return f"{VERSION_PREFIX}1.0.0"
        highest = max(versions, key=_key)
        major, minor, _ = _key(highest)
        if versions[highest].get("config") == config:
            return f"{VERSION_PREFIX}{major}.{minor + 1}.0"
        return f"{VERSION_PREFIX}{major + 1}.0.0"

    def _store(self, artifact: RewardArtifact) -> None:
        """Write the artifact under versions/ (an orphan left by a crash before indexing is replaced)."""
        if not self.store.remote:
            save_reward(artifact, Path(self.store.root) / "versions" / artifact.version, overwrite=True)
            return
        with tempfile.TemporaryDirectory(prefix="fleetwm-rewards-") as tmp:
            local = save_reward(artifact, Path(tmp) / artifact.version)
            target = f"{self.store.root}/versions/{artifact.version}"
            self.store.filesystem.create_dir(target, recursive=True)
            pafs.copy_files(str(local), target, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.store.filesystem)

    def _download(self, version: str, final: Path) -> None:
        """Copy a remote version into the cache, verified, then put it at ``final`` in one rename."""
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=final.parent))
        try:
            pafs.copy_files(f"{self.store.root}/versions/{version}", str(tmp),
                            source_filesystem=self.store.filesystem, destination_filesystem=pafs.LocalFileSystem())
            try:
                verify_reward(tmp)
            except ArtifactError as err:
                raise ArtifactError(f"{self.uri} reward {version} (downloaded): {err}") from None
            with contextlib.suppress(OSError):  # another process may have cached it meanwhile
                os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class RewardCache:
    """The last few reward models loaded from a registry, by version (least recently used dropped first).

    A planner deployment loads a named reward model once and keeps it: versions are immutable, so a
    cached one never goes stale.
    """

    def __init__(self, registry: RewardRegistry | None, size: int = 4, device: str | torch.device = "cpu") -> None:
        """``registry`` None: no reward models can be named (``get`` explains why)."""
        if size < 1:
            raise ValueError(f"a reward cache holds at least 1 model, got size={size}")
        self.registry, self.size, self.device = registry, size, device
        self._loaded: collections.OrderedDict[str, RewardArtifact] = collections.OrderedDict()

    def get(self, version: str) -> RewardArtifact:
        """The reward model ``version``, loaded on first use.

        Raises:
            RegistryError: no registry, or no such version.
        """
        if version in self._loaded:
            self._loaded.move_to_end(version)
            return self._loaded[version]
        if self.registry is None:
            raise RegistryError(f"reward_model {version!r}: this planner serves a model directory without a "
                                "registry, so no reward models are registered (serve with --registry)")
        artifact = self.registry.load(version, self.device)
        self._loaded[version] = artifact
        while len(self._loaded) > self.size:
            self._loaded.popitem(last=False)
        return artifact

    @property
    def loaded(self) -> list[str]:
        """The cached versions, least recently used first."""
        return list(self._loaded)
