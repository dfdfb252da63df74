"""A registry of world-model versions with stages, on a local directory or a pyarrow filesystem URI.

Layout of ``REGISTRY``::

    registry.json       format, every version's record, the history of stage changes
    versions/1.0.0/     an artifact directory exactly as ``worldmodel.artifact.save_model`` writes it
    versions/1.1.0/

A version enters the index only once its artifact is complete, and the index is
always rewritten whole: a temp file, fsync and ``os.replace`` on a local
directory; a single object put on an object store (atomic per object). On a local
registry every read-modify-write holds an exclusive ``flock`` on
``REGISTRY/.lock``, so concurrent writers (two learners registering at once)
serialise and get distinct versions. Object stores have no such lock: concurrent
writers there get last-writer-wins on ``registry.json`` (two registering at once
may be given the same version, and one registration is lost), so give a remote
registry one writer at a time.

Any root written as a URI (``s3://``, ``gs://``, ``file://``) is treated as
remote: artifacts are uploaded after being saved locally, and downloaded and
verified into a cache directory before loading. Versions are immutable, so the
cache is keyed by registry and version.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow.fs as pafs
import torch

from worldmodel.artifact import ArtifactError, check_version, load_model, save_model, verify
from worldmodel.data.writer import publish_bytes, resolve_root
from worldmodel.model import WorldModel

FORMAT = "fleetwm.registry/1"
INDEX = "registry.json"
LOCK = ".lock"
STAGES = ("candidate", "shadow", "production", "archived")
PROMOTABLE = ("production", "shadow")
"""Stages ``promote`` moves a version to; each is held by at most one version at a time."""


class RegistryError(ValueError):
    """An unknown version or stage, a refused promotion, or a corrupt index."""


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

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "stage": self.stage, "created": self.created, "parent": self.parent,
                "data_fingerprint": self.data_fingerprint, "metrics": self.metrics, "holdout": self.holdout,
                "lineage": self.lineage}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "VersionInfo":
        """The public fields of an index record (which also keeps the configs used for numbering)."""
        return cls(**{k: record[k] for k in ("version", "stage", "created", "parent", "data_fingerprint",
                                             "metrics", "holdout", "lineage")})


def _semver(version: str) -> tuple[int, int, int]:
    major, minor, patch = check_version(version).split(".")
    return int(major), int(minor), int(patch)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _score(holdout: dict[str, Any] | None, side: str) -> str:
    entry = (holdout or {}).get(side)
    return f"{entry['score']:.6g}" if isinstance(entry, dict) and "score" in entry else "n/a"


def _check_holdout(holdout: dict[str, Any] | None) -> dict[str, Any] | None:
    if holdout is None:
        return None
    if not isinstance(holdout, dict) or not isinstance(holdout.get("better"), bool) \
            or not isinstance(holdout.get("candidate"), dict) or "score" not in holdout["candidate"]:
        raise RegistryError(f"holdout must be None or a dict with 'candidate': {{'score': ...}} and a bool "
                            f"'better', got {holdout!r}")
    return json.loads(json.dumps(holdout))


class ModelRegistry:
    """Versions of a world model, their stages, and the history of stage changes."""

    def __init__(self, uri: str, cache_dir: str | None = None) -> None:
        """
        Args:
            uri: a local directory, or a URI pyarrow understands (``s3://``, ``gs://``, ``file://``).
            cache_dir: where remote artifacts are downloaded (default ``$XDG_CACHE_HOME/fleetwm/registry``).
        """
        self.uri = uri
        self.filesystem, self.root = resolve_root(uri)
        self.remote = "://" in uri
        base = cache_dir or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                         "fleetwm", "registry")
        # Two registries may both hold a "1.0.0": the cache is keyed by registry too.
        self.cache_dir = Path(base) / hashlib.sha256(uri.encode()).hexdigest()[:16]

    # -- reading ---------------------------------------------------------------------------------

    def versions(self) -> list[VersionInfo]:
        """Every version, sorted by semantic version."""
        records = self._read()["versions"]
        return [VersionInfo.from_record(records[v]) for v in sorted(records, key=_semver)]

    def get(self, ref: str) -> VersionInfo:
        """A version by number ("1.2.0"), by stage ("production", "shadow": the highest in that stage), or "latest".

        Raises:
            RegistryError: no such version, or no version in that stage.
        """
        return VersionInfo.from_record(self._resolve(self._read(), ref))

    def holder(self, stage: str) -> VersionInfo | None:
        """The highest version in ``stage`` (None when the stage is empty)."""
        if stage not in STAGES:
            raise RegistryError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        return self._holder(self._read(), stage)

    def production(self) -> VersionInfo | None:
        return self.holder("production")

    def shadow(self) -> VersionInfo | None:
        return self.holder("shadow")

    def history(self) -> list[dict[str, Any]]:
        """Stage changes, oldest first: time, action, version, stage, from, to, forced."""
        return self._read()["history"]

    def model_dir(self, ref: str) -> Path:
        """The local directory of a version's artifact; remote ones are downloaded and verified once."""
        version = self.get(ref).version
        if not self.remote:
            return Path(self.root) / "versions" / version
        final = self.cache_dir / version
        if final.is_dir():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=final.parent))
        try:
            pafs.copy_files(f"{self.root}/versions/{version}", str(tmp), source_filesystem=self.filesystem,
                            destination_filesystem=pafs.LocalFileSystem())
            try:
                manifest = verify(tmp)
            except ArtifactError as err:
                raise ArtifactError(f"{self.uri} version {version} (downloaded): {err}") from None
            if manifest["version"] != version:
                raise ArtifactError(f"{self.uri} version {version}: its manifest says version "
                                    f"{manifest['version']!r}")
            with contextlib.suppress(OSError):  # another process may have cached it meanwhile
                os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def load(self, ref: str, device: str | torch.device = "cpu") -> WorldModel:
        """Load and verify a version (see ``get`` for ``ref``)."""
        return load_model(self.model_dir(ref), device)

    # -- writing ---------------------------------------------------------------------------------

    def register(self, model: WorldModel, *, parent: str | None = None, holdout: dict[str, Any] | None = None,
                 lineage: dict[str, Any] | None = None, stage: str = "candidate") -> VersionInfo:
        """Store ``model`` as a new version; sets ``model.version`` to the number it assigns.

        The first version is 1.0.0; later ones bump MINOR of the highest version when the space spec
        and model config equal its own, MAJOR otherwise.

        Args:
            model: the world model to store.
            parent: the production version it was trained to replace.
            holdout: its comparison with production on a shared holdout (see ``VersionInfo.holdout``).
            lineage: free-form provenance.
            stage: the stage to register in; "production" and "shadow" go through ``promote``'s rules.

        Returns:
            The new version's record.
        """
        if stage not in STAGES:
            raise RegistryError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        holdout = _check_holdout(holdout)
        config = json.loads(json.dumps({"spec": model.spec.to_dict(), "model": model.model_config.to_dict()}))
        with self._lock():
            index = self._read()
            if parent is not None and parent not in index["versions"]:
                raise RegistryError(self._unknown(index, parent, "parent"))
            version = self._next_version(index, config)
            index["versions"][version] = {
                "version": version, "stage": "candidate", "created": _now(), "parent": parent,
                "data_fingerprint": model.data_fingerprint, "metrics": json.loads(json.dumps(model.metrics)),
                "holdout": holdout, "lineage": json.loads(json.dumps(lineage or {})), "config": config}
            self._record(index, "register", version, "candidate", None, version, False)
            if stage != "candidate":  # a refused promotion raises here, before anything is written
                self._set_stage(index, version, stage, force=False)
            model.version = version
            self._store_artifact(model)
            self._write(index)
            return VersionInfo.from_record(index["versions"][version])

    def promote(self, version: str, stage: str = "production", *, force: bool = False) -> VersionInfo:
        """Move ``version`` to "production" (the old one is archived) or "shadow" (the old one back to candidate).

        Raises:
            RegistryError: unknown version or stage, or a production promotion its holdout says is not
                better (unless ``force``).
        """
        with self._lock():
            index = self._read()
            record = self._resolve(index, version)
            self._set_stage(index, record["version"], stage, force=force)
            self._write(index)
            return VersionInfo.from_record(record)

    def rollback(self) -> VersionInfo:
        """Return production to the version that held it before the current one; the current one is archived.

        Raises:
            RegistryError: no production version, or none before it in the history.
        """
        with self._lock():
            index = self._read()
            current = self._holder(index, "production")
            stack = self._production_stack(index)
            if current is None or len(stack) < 2:
                raise RegistryError(f"registry {self.uri}: nothing to roll back to; production is "
                                    f"{current.version if current else 'unset'} and has no previous version")
            previous = stack[-2]
            versions = index["versions"]
            versions[current.version]["stage"] = "archived"
            versions[previous]["stage"] = "production"
            self._record(index, "rollback", previous, "production", current.version, previous, False)
            self._write(index)
            return VersionInfo.from_record(versions[previous])

    # -- internals -------------------------------------------------------------------------------

    def _set_stage(self, index: dict[str, Any], version: str, stage: str, *, force: bool) -> None:
        if stage not in PROMOTABLE:
            raise RegistryError(f"can promote to {' or '.join(PROMOTABLE)}, got stage {stage!r}")
        record = index["versions"][version]
        if record["stage"] == stage:
            return  # already there: promoting again changes nothing and records nothing
        current = self._holder(index, stage)
        holdout = record["holdout"]
        if stage == "production" and holdout is not None and not holdout["better"] and not force:
            against = holdout.get("production_version") or (current.version if current else None)
            raise RegistryError(
                f"refusing to promote {version} to production: its holdout score {_score(holdout, 'candidate')} "
                f"is not better than production {against}'s {_score(holdout, 'production')} (lower is better); "
                f"pass force=True (--force) to promote anyway")
        if stage == "shadow" and record["stage"] == "production":
            raise RegistryError(f"{version} is the production version; promote another version to production "
                                f"before shadowing it")
        if current is not None:
            index["versions"][current.version]["stage"] = "archived" if stage == "production" else "candidate"
        record["stage"] = stage
        self._record(index, "promote", version, stage, current.version if current else None, version, force)

    @staticmethod
    def _production_stack(index: dict[str, Any]) -> list[str]:
        """Production versions in the order they took over, with rolled-back ones popped."""
        stack: list[str] = []
        for entry in index["history"]:
            if entry["stage"] != "production":
                continue
            if entry["action"] == "rollback":
                stack.pop()
            else:
                stack.append(entry["to"])
        return stack

    @staticmethod
    def _record(index: dict[str, Any], action: str, version: str, stage: str, old: str | None, new: str | None,
                forced: bool) -> None:
        index["history"].append({"time": _now(), "action": action, "version": version, "stage": stage,
                                 "from": old, "to": new, "forced": forced})

    @staticmethod
    def _next_version(index: dict[str, Any], config: dict[str, Any]) -> str:
        if not index["versions"]:
            return "1.0.0"
        highest = max(index["versions"], key=_semver)
        major, minor, _ = _semver(highest)
        if index["versions"][highest].get("config") == config:
            return f"{major}.{minor + 1}.0"
        return f"{major + 1}.0.0"

    def _holder(self, index: dict[str, Any], stage: str) -> VersionInfo | None:
        held = [r for r in index["versions"].values() if r["stage"] == stage]
        return VersionInfo.from_record(max(held, key=lambda r: _semver(r["version"]))) if held else None

    def _resolve(self, index: dict[str, Any], ref: str) -> dict[str, Any]:
        versions = index["versions"]
        if ref == "latest":
            if not versions:
                raise RegistryError(f"registry {self.uri} has no versions")
            return versions[max(versions, key=_semver)]
        if ref in STAGES:
            holder = self._holder(index, ref)
            if holder is None:
                raise RegistryError(f"registry {self.uri} has no {ref} version")
            return versions[holder.version]
        if ref not in versions:
            raise RegistryError(self._unknown(index, ref, "version"))
        return versions[ref]

    def _unknown(self, index: dict[str, Any], ref: str, what: str) -> str:
        known = ", ".join(sorted(index["versions"], key=_semver)) or "none"
        return (f"unknown {what} {ref!r} in registry {self.uri}; known versions: {known} "
                f"(or a stage: {', '.join(STAGES)}, or 'latest')")

    def _store_artifact(self, model: WorldModel) -> None:
        """Write the artifact under versions/; an orphan left by a crash before indexing is replaced."""
        if not self.remote:
            save_model(model, Path(self.root) / "versions" / model.version, overwrite=True)
            return
        with tempfile.TemporaryDirectory(prefix="fleetwm-registry-") as tmp:
            local = save_model(model, Path(tmp) / model.version)
            target = f"{self.root}/versions/{model.version}"
            self.filesystem.create_dir(target, recursive=True)
            pafs.copy_files(str(local), target, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.filesystem)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        if self.remote:
            yield  # object stores: last writer wins on the index (see the module docstring)
            return
        os.makedirs(self.root, exist_ok=True)
        fd = os.open(os.path.join(self.root, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self) -> dict[str, Any]:
        path = f"{self.root}/{INDEX}"
        try:
            with self.filesystem.open_input_stream(path) as f:
                raw = f.read()
        except FileNotFoundError:
            return {"format": FORMAT, "versions": {}, "history": []}
        where = f"{self.uri.rstrip('/')}/{INDEX}" if self.remote else path
        try:
            index = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RegistryError(f"{where}: not valid JSON ({err}); the registry index is corrupt") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            found = index.get("format") if isinstance(index, dict) else type(index).__name__
            raise RegistryError(f"{where}: format {found!r}, this fleetwm reads {FORMAT!r}")
        if not isinstance(index.get("versions"), dict) or not isinstance(index.get("history"), list):
            raise RegistryError(f"{where}: needs a 'versions' object and a 'history' list; the index is corrupt")
        return index

    def _write(self, index: dict[str, Any]) -> None:
        publish_bytes(self.filesystem, f"{self.root}/{INDEX}",
                      (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
