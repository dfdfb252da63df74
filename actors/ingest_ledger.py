"""The ingest consumers' ledger: which log files hold which stream entries, to make re-delivery idempotent.

Each consumer keeps ``<log root>/_ingest/<group>/<consumer>.json`` (the "_" hides it from log readers): the
files it wrote or is about to write, each with the lowest and highest stream id of its entries. It records a
file before writing it and keeps it while its entries can still be re-delivered (not all below the group's
oldest pending entry) or while it is recent (its last entry id, a Redis time in ms, within the consumer's
dedupe window), so it stays small. An entry that is re-delivered (a consumer died after writing its file,
before acknowledging it) can only be in a recorded file whose id range covers it; ``written_keys`` reads
those files' (agent_id, eps_id, t) so the consumer acknowledges such entries instead of writing them again.
``recall`` loads the keys of the group's recent files into a starting consumer's ``RecentKeys``
(``actors.ingest_window``). A file since merged by compaction is looked up in the merged file that lists it
(read whole: compact past days, as ``worldmodel.data.compact`` advises).
"""

from __future__ import annotations

import bisect
import json
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from actors.ingest_window import RecentKeys
from actors.streams import id_key
from worldmodel.data import schema as sc
from worldmodel.data.reader import COMPACT_PREFIX, replaced_files
from worldmodel.data.writer import TrajectoryWriter, one_line, publish_bytes

LEDGER_DIR = "_ingest"

Key = tuple[str, str, int]
"""(agent_id, eps_id, t): what makes a transition unique in the logs."""


@dataclass(frozen=True)
class LedgerFile:
    """A log file a consumer wrote, with the range of stream ids of its rows (relative path to the root)."""

    path: str
    first_id: str
    last_id: str


class IngestLedger:
    """One consumer's ledger, and lookups across its group's ledgers."""

    def __init__(self, writer: TrajectoryWriter, group: str, consumer: str) -> None:
        self.fs, self.root = writer.filesystem, writer.root
        self.directory = f"{self.root}/{LEDGER_DIR}/{group}"
        self.path = f"{self.directory}/{consumer}.json"
        self.files = self._read(self.path)

    def record(self, new: list[LedgerFile], oldest_pending: str | None, recent_ms: int | None = None) -> None:
        """Publish the ledger with ``new`` added, first dropping files whose entries are all acknowledged and,
        with ``recent_ms`` (Unix ms), whose last entry id is older than that."""
        keep = [f for f in self.files if recent_ms is not None and id_key(f.last_id)[0] >= recent_ms
                or oldest_pending is not None and id_key(f.last_id) >= id_key(oldest_pending)]
        self.files = keep + new
        body = json.dumps({"files": [[f.path, f.first_id, f.last_id] for f in self.files]}).encode()
        publish_bytes(self.fs, self.path, body)

    def written_keys(self, entry_ids: list[bytes]) -> set[Key]:
        """The keys in every file of the group's ledgers whose id range covers one of ``entry_ids``."""
        wanted = sorted(id_key(i) for i in entry_ids)
        if not wanted:
            return set()
        keys: set[Key] = set()
        for ledger in self._group_ledgers():
            for f in self._read(ledger):
                at = bisect.bisect_left(wanted, id_key(f.first_id))  # the first wanted id at or after the range's start
                if at < len(wanted) and wanted[at] <= id_key(f.last_id):
                    keys |= self._keys(f"{self.root}/{f.path}")
        return keys

    def recent_files(self, since_ms: int) -> list[tuple[str, int]]:
        """The group's files (full paths; a merged file once) whose last entry id is at or after ``since_ms``
        (Unix ms), oldest first, each with that id's ms. Files recorded but never published are left out."""
        latest: dict[str, int] = {}
        for ledger in self._group_ledgers():
            for f in self._read(ledger):
                ms = id_key(f.last_id)[0]
                path = self._published(f"{self.root}/{f.path}") if ms >= since_ms else ""
                if path:
                    latest[path] = max(latest.get(path, 0), ms)
        return sorted(latest.items(), key=lambda item: item[1])

    def recall(self, recent: RecentKeys, window_s: float) -> None:
        """Hold in ``recent`` the keys of the group's files from the last ``window_s`` seconds, each as held
        since its last entry was added."""
        wall, now = time.time(), time.monotonic()
        for path, ms in self.recent_files(int((wall - window_s) * 1000)):
            table = self._key_columns(path)
            keys = recent.keys(table.column(sc.AGENT_ID), table.column(sc.EPS_ID), table.column(sc.T).to_numpy())
            recent.add(keys, now - (wall - ms / 1000))

    def _key_columns(self, path: str) -> pa.Table:
        return pq.read_table(path, columns=[sc.AGENT_ID, sc.EPS_ID, sc.T], filesystem=self.fs)

    def _group_ledgers(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.directory, allow_not_found=True))
        return [i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".json")]

    def _keys(self, path: str) -> set[Key]:
        path = self._published(path)
        if not path:
            return set()
        table = self._key_columns(path)
        return set(zip(*(table.column(c).to_pylist() for c in (sc.AGENT_ID, sc.EPS_ID, sc.T))))

    def _published(self, path: str) -> str:
        """``path``, or the compacted file it was merged into; "" when it was recorded but never published
        (the consumer died before writing it)."""
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            return path
        return self._merged_into(path)

    def _merged_into(self, path: str) -> str:
        """The compacted file (in ``path``'s day directory) that lists ``path``, or ""."""
        day = path[len(self.root) + 1:].split("/")[0]
        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/{day}", allow_not_found=True))
        for info in infos:
            if info.base_name.startswith(COMPACT_PREFIX) and path in replaced_files(self.fs, [info.path]):
                return info.path
        return ""

    def _read(self, path: str) -> list[LedgerFile]:
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return []
        with self.fs.open_input_stream(path) as f:
            text = f.read()
        try:
            return [LedgerFile(str(p), str(lo), str(hi)) for p, lo, hi in json.loads(text)["files"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"ingest ledger {path} is malformed ({one_line(e)}); expected "
                             '{"files": [[path, first_id, last_id], ...]}') from e
