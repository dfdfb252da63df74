"""Where a model registry keeps its index and artifacts: a local directory or a pyarrow filesystem URI.

Layout of ``REGISTRY``::

    registry.json       format, every version's record, the history of stage changes
    versions/1.0.0/     an artifact directory exactly as its kind's writer (``worldmodel.registry_kinds``) wrote it
    versions/1.1.0/

The index is always rewritten whole: a temp file, fsync and ``os.replace`` on a
local directory; a single object put on an object store (atomic per object). On a
local registry ``lock`` holds an exclusive ``flock`` on ``REGISTRY/.lock``, so
concurrent writers (two learners registering at once) serialise. Object stores
have no such lock: concurrent writers there get last-writer-wins on
``registry.json`` (two registering at once may be given the same version, and
one registration is lost), so give a remote registry one writer at a time.

Any root written as a URI (``s3://``, ``gs://``, ``file://``) is treated as
remote: artifacts are uploaded after being saved locally, and downloaded and
verified into a cache directory before loading. Versions are immutable, so the
cache is keyed by registry and version.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pyarrow.fs as pafs

from worldmodel.artifact import ArtifactError, verify
from worldmodel.data.writer import publish_bytes, resolve_root
from worldmodel.registry_kinds import ARTIFACT_FORMATS, RegisteredModel, save

FORMAT = "fleetwm.registry/1"
INDEX = "registry.json"
LOCK = ".lock"


class RegistryError(ValueError):
    """An unknown version or stage, a refused promotion, or a corrupt index."""


class RegistryStore:
    """A registry's index (read and written whole) and its versions' artifact directories."""

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

    def artifact_dir(self, version: str) -> Path:
        """The local directory of a version's artifact; remote ones are downloaded and verified once."""
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
                manifest = verify(tmp, ARTIFACT_FORMATS)
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

    def store_artifact(self, model: RegisteredModel) -> None:
        """Write the artifact (of either kind) under versions/; an orphan left by a crash before indexing is
        replaced."""
        if not self.remote:
            save(model, Path(self.root) / "versions" / model.version, overwrite=True)
            return
        with tempfile.TemporaryDirectory(prefix="fleetwm-registry-") as tmp:
            local = save(model, Path(tmp) / model.version)
            target = f"{self.root}/versions/{model.version}"
            self.filesystem.create_dir(target, recursive=True)
            pafs.copy_files(str(local), target, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.filesystem)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the registry for a read-modify-write (locally; see the module docstring for remote ones)."""
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

    def read(self) -> dict[str, Any]:
        """The index (an empty one when the registry has none yet).

        Raises:
            RegistryError: the index is not valid JSON or not in ``FORMAT``.
        """
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

    def write(self, index: dict[str, Any]) -> None:
        """Replace the index whole, atomically."""
        publish_bytes(self.filesystem, f"{self.root}/{INDEX}",
                      (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
