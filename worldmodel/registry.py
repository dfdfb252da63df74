"""A registry of world-model versions with stages: numbering, promotion, rollback and their history.

Versions are numbered by the registry (semantic versions, see ``register``); stages say
which version serves ("production"), which is planned beside it ("shadow"), and which
wait ("candidate") or are retired ("archived"). A version enters the index only once its
artifact is complete. A live A/B test (``ABTest``, at most one at a time) serves a sticky share of the
agents with a candidate version; its record lives in the index beside the stages, so servers follow it as
they follow a stage, and promoting its version to production ends it.
Every change is a read-modify-write of the whole index under the store's lock, so
concurrent writers to a local registry serialise and get distinct versions; where the
index and artifacts live, and how remote ones are cached, is ``worldmodel.registry_store``.
"""

from __future__ import annotations

import datetime
import json
import uuid
from pathlib import Path
from typing import Any

import torch

from worldmodel.artifact import check_version, load_model
from worldmodel.latent_artifact import LatentArtifact, load_latent_model
from worldmodel.model import WorldModel
from worldmodel.registry_kinds import RegisteredModel, identity, kind_of
from worldmodel.registry_records import LATENT, ABTest, VersionInfo
from worldmodel.registry_store import RegistryError, RegistryStore
from worldmodel.stages import PROMOTABLE, STAGES


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
        self.store = RegistryStore(uri, cache_dir)

    @property
    def remote(self) -> bool:
        """Whether the registry is at a URI (artifacts are uploaded, and downloaded to a cache to load)."""
        return self.store.remote

    # -- reading ---------------------------------------------------------------------------------

    def versions(self) -> list[VersionInfo]:
        """Every version, sorted by semantic version."""
        records = self.store.read()["versions"]
        return [VersionInfo.from_record(records[v]) for v in sorted(records, key=_semver)]

    def get(self, ref: str) -> VersionInfo:
        """A version by number ("1.2.0"), by stage ("production", "shadow": the highest in that stage), or "latest".

        Raises:
            RegistryError: no such version, or no version in that stage.
        """
        return VersionInfo.from_record(self._resolve(self.store.read(), ref))

    def holder(self, stage: str) -> VersionInfo | None:
        """The highest version in ``stage`` (None when the stage is empty)."""
        if stage not in STAGES:
            raise RegistryError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        return self._holder(self.store.read(), stage)

    def production(self) -> VersionInfo | None:
        return self.holder("production")

    def shadow(self) -> VersionInfo | None:
        return self.holder("shadow")

    def history(self) -> list[dict[str, Any]]:
        """Stage changes, oldest first: time, action, version, stage, from, to, forced (and a reason when one
        was given: a forced promotion says what it overrode)."""
        return self.store.read()["history"]

    def ab(self) -> ABTest | None:
        """The running A/B test, or None."""
        record = self.store.read().get("ab")
        return ABTest(**record) if record else None

    def model_dir(self, ref: str) -> Path:
        """The local directory of a version's artifact; remote ones are downloaded and verified once."""
        return self.store.artifact_dir(self.get(ref).version)

    def load(self, ref: str, device: str | torch.device = "cpu") -> WorldModel:
        """Load and verify a vector version (see ``get`` for ``ref``); a latent one is ``load_latent``'s."""
        return load_model(self.model_dir(ref), device)

    def load_latent(self, ref: str, device: str | torch.device = "cpu") -> LatentArtifact:
        """Load and verify a latent (camera) version (see ``get`` for ``ref``)."""
        info = self.get(ref)
        if info.kind != LATENT:
            raise RegistryError(f"version {info.version} in {self.uri} is a {info.kind} model, not a latent one")
        return load_latent_model(self.store.artifact_dir(info.version), device)

    # -- writing ---------------------------------------------------------------------------------

    def register(self, model: RegisteredModel, *, parent: str | None = None, holdout: dict[str, Any] | None = None,
                 lineage: dict[str, Any] | None = None, stage: str = "candidate") -> VersionInfo:
        """Store ``model`` as a new version; sets ``model.version`` to the number it assigns.

        The first version is 1.0.0; later ones bump MINOR of the highest version when the kind, space spec
        and model config equal its own, MAJOR otherwise.

        Args:
            model: the world model to store: a vector ``WorldModel`` or a latent ``LatentArtifact``.
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
        config = identity(model)
        with self.store.lock():
            index = self.store.read()
            if parent is not None and parent not in index["versions"]:
                raise RegistryError(self._unknown(index, parent, "parent"))
            version = self._next_version(index, config)
            index["versions"][version] = {
                "version": version, "stage": "candidate", "created": _now(), "parent": parent,
                "data_fingerprint": model.data_fingerprint, "metrics": json.loads(json.dumps(model.metrics)),
                "holdout": holdout, "lineage": json.loads(json.dumps(lineage or {})), "config": config,
                "kind": kind_of(model)}
            self._record(index, "register", version, "candidate", None, version, False)
            if stage != "candidate":  # a refused promotion raises here, before anything is written
                self._set_stage(index, version, stage, force=False)
            model.version = version
            self.store.store_artifact(model)
            self.store.write(index)
            return VersionInfo.from_record(index["versions"][version])

    def promote(self, version: str, stage: str = "production", *, force: bool = False,
                reason: str | None = None) -> VersionInfo:
        """Move ``version`` to "production" (the old one is archived) or "shadow" (the old one back to candidate).

        Promoting the A/B test's version to production ends the test. ``reason`` is recorded in the history
        (what a forced promotion overrode).

        Raises:
            RegistryError: unknown version or stage, or a production promotion its holdout says is not
                better (unless ``force``).
        """
        with self.store.lock():
            index = self.store.read()
            record = self._resolve(index, version)
            self._set_stage(index, record["version"], stage, force=force, reason=reason)
            ab = index.get("ab")
            if ab and stage == "production" and ab["version"] == record["version"]:
                index["ab"] = None
                self._record(index, "ab_end", ab["version"], "candidate", ab["version"], None, False, "promoted")
            self.store.write(index)
            return VersionInfo.from_record(record)

    def start_ab(self, version: str, share: float) -> ABTest:
        """Serve ``share`` of the agents with ``version`` (a new share for the running test's version keeps
        its id and statistics; another version replaces the running test).

        Raises:
            RegistryError: unknown version, the production version, an archived one, or a share not in (0, 1).
        """
        if not isinstance(share, (int, float)) or not 0 < share < 1:
            raise RegistryError(f"share must be a fraction in (0, 1) of the agents, got {share!r}")
        with self.store.lock():
            index = self.store.read()
            record = self._resolve(index, version)
            if record["stage"] in ("production", "archived"):
                raise RegistryError(f"{record['version']} is {record['stage']}; an A/B test serves a candidate "
                                    f"or shadow version beside production")
            current, production = index.get("ab"), self._holder(index, "production")
            same = bool(current) and current["version"] == record["version"]
            test = ABTest(id=current["id"] if same else uuid.uuid4().hex[:12], version=record["version"],
                          share=float(share), started=current["started"] if same else _now(),
                          production=production.version if production else None)
            index["ab"] = test.to_dict()
            self._record(index, "ab_share" if same else "ab_start", test.version, "candidate",
                         current["version"] if current else None, test.version, False, f"share {share:g}")
            self.store.write(index)
            return test

    def end_ab(self) -> ABTest | None:
        """End the running A/B test (its agents go back to production); returns it (None: none was running)."""
        with self.store.lock():
            index = self.store.read()
            current = index.get("ab")
            if not current:
                return None
            index["ab"] = None
            self._record(index, "ab_end", current["version"], "candidate", current["version"], None, False, "ended")
            self.store.write(index)
            return ABTest(**current)

    def rollback(self) -> VersionInfo:
        """Return production to the version that held it before the current one; the current one is archived.

        Raises:
            RegistryError: no production version, or none before it in the history.
        """
        with self.store.lock():
            index = self.store.read()
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
            self.store.write(index)
            return VersionInfo.from_record(versions[previous])

    # -- internals -------------------------------------------------------------------------------

    def _set_stage(self, index: dict[str, Any], version: str, stage: str, *, force: bool,
                   reason: str | None = None) -> None:
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
        self._record(index, "promote", version, stage, current.version if current else None, version, force,
                     reason)

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
                forced: bool, reason: str | None = None) -> None:
        entry = {"time": _now(), "action": action, "version": version, "stage": stage, "from": old, "to": new,
                 "forced": forced}
        index["history"].append(entry | ({"reason": reason} if reason else {}))

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
