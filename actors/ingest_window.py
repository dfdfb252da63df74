"""The keys an ingest consumer wrote recently, to drop a transition that comes again in a later flush.

A transition is unique by (agent_id, eps_id, t). ``RecentKeys`` holds, exactly, the keys written in the last
``window_s`` seconds: each episode (agent_id, eps_id) gets a number, a key becomes one int64
(``number << 32 | t``; ``t`` is an int32 >= 0, so keys of two episodes never touch), and the keys are kept
as sorted, disjoint runs of consecutive steps. An episode whose steps arrive in order is one run (16 bytes)
however long it is, so memory follows the episodes seen in the window, not the rows. An episode with no
key written for ``window_s`` is forgotten, its number reused.

Everything per row is numpy or Arrow; Python loops run per episode of a batch, not per row.

Dimensions: ``B`` rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

Strings = np.ndarray | pa.Array | pa.ChunkedArray
"""A column of strings: a numpy object array (``Transitions``) or an Arrow column (a log file's)."""


class RecentKeys:
    """The (agent_id, eps_id, t) keys written in the last ``window_s`` seconds (monotonic clock)."""

    def __init__(self, window_s: float) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._numbers: dict[tuple[str, str], int] = {}
        self._episodes: list[tuple[str, str] | None] = []  # number -> (agent_id, eps_id); None: free
        self._free: list[int] = []
        self._last = np.zeros(0)  # number -> monotonic time of its latest key; -inf: none yet; NaN: free
        self._lo = np.zeros(0, np.int64)  # runs [lo, hi] of held keys, sorted, disjoint, not adjacent
        self._hi = np.zeros(0, np.int64)

    @property
    def episodes(self) -> int:
        """Episodes held."""
        return len(self._numbers)

    @property
    def runs(self) -> int:
        """Runs of consecutive steps held (16 bytes each)."""
        return len(self._lo)

    def keys(self, agent_id: Strings, eps_id: Strings, t: np.ndarray) -> np.ndarray:
        """The (B,) int64 keys of B rows; episodes not held yet get a number (kept only once ``add``-ed)."""
        agents, agent_names = _codes(agent_id)
        epss, eps_names = _codes(eps_id)
        pairs = agents * max(len(eps_names), 1) + epss  # (B,) one int per (agent, episode)
        unique, inverse = np.unique(pairs, return_inverse=True)
        numbers = np.array([self._number(agent_names[p // len(eps_names)], eps_names[p % len(eps_names)])
                            for p in unique.tolist()], np.int64)
        ts = np.asarray(t, np.int64)
        if ts.size and (ts.min() < 0 or ts.max() > np.iinfo(np.int32).max):
            raise ValueError(f"t must be in [0, 2**31), got values in [{ts.min()}, {ts.max()}]")
        return (numbers[inverse.reshape(-1)] << 32) | ts

    def fresh(self, keys: np.ndarray) -> np.ndarray:
        """A (B,) mask of the rows to write: the first row of each key, unless the key is held."""
        mask = np.zeros(len(keys), bool)
        mask[np.unique(keys, return_index=True)[1]] = True
        if len(self._lo):
            at = np.searchsorted(self._lo, keys, side="right") - 1  # the run starting at or before each key
            mask &= ~((at >= 0) & (keys <= self._hi[np.maximum(at, 0)]))
        return mask

    def add(self, keys: np.ndarray, now: float) -> None:
        """Hold ``keys`` (written at monotonic time ``now``); forget episodes idle for ``window_s``."""
        k = np.unique(keys)
        if len(k):
            self._insert(k)
            seen = k >> 32
            self._last[seen] = np.maximum(self._last[seen], now)
        self._evict(now)

    def _insert(self, k: np.ndarray) -> None:
        """Merge sorted unique keys into the runs."""
        starts = np.r_[0, np.flatnonzero(np.diff(k) != 1) + 1]  # where a run of consecutive keys begins
        lo = np.concatenate([self._lo, k[starts]])
        hi = np.concatenate([self._hi, k[np.r_[starts[1:] - 1, len(k) - 1]]])
        order = np.argsort(lo, kind="stable")
        lo, hi = lo[order], hi[order]
        # runs that overlap or touch become one: a run starts a new one only past everything before it
        reach = np.maximum.accumulate(hi)
        first = np.flatnonzero(np.r_[True, lo[1:] > reach[:-1] + 1])
        self._lo, self._hi = lo[first], np.maximum.reduceat(hi, first)

    def _number(self, agent: str, eps: str) -> int:
        key = (agent, eps)
        number = self._numbers.get(key)
        if number is None:
            if self._free:
                number = self._free.pop()
                self._episodes[number] = key
            else:
                number = len(self._episodes)
                self._episodes.append(key)
                if number == len(self._last):
                    grown = np.full(max(2 * number, 64), np.nan)
                    grown[:number] = self._last
                    self._last = grown
            self._last[number] = -np.inf  # numbered, not held: forgotten at the next eviction unless added
            self._numbers[key] = number
        return number

    def _evict(self, now: float) -> None:
        """Forget the episodes whose latest key is older than ``window_s`` (free numbers are NaN: never stale)."""
        stale = np.flatnonzero(self._last < now - self.window_s)
        if not len(stale):
            return
        for number in stale.tolist():
            del self._numbers[self._episodes[number]]  # type: ignore[index]
            self._episodes[number] = None
            self._free.append(number)
        self._last[stale] = np.nan
        keep = ~np.isin(self._lo >> 32, stale)
        self._lo, self._hi = self._lo[keep], self._hi[keep]


def _codes(values: Strings) -> tuple[np.ndarray, list[str]]:
    """(B,) int64 codes of a string column and the distinct strings they index."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    elif not isinstance(values, pa.Array):
        values = pa.array(values, pa.string())
    encoded = values.dictionary_encode()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()
