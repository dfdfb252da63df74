"""The columnar form of record batches between actors: exact round trips, copies, and what stays a list."""

from __future__ import annotations

import numpy as np

from actors.common import pack_rows, send_rows, unpack_rows


def _row(i: int, warm: np.ndarray | None) -> dict:
    return {"agent_id": f"a{i}", "obs": np.full(3, i, np.float32), "warm": warm, "t": i,
            "response": {"action": [0.1 * i]}}


def test_rows_round_trip_with_arrays_stacked_and_the_rest_as_lists() -> None:
    rows = [_row(i, np.full((2, 2), i, np.float32) if i != 1 else None) for i in range(3)]
    packed = pack_rows(rows)
    columns = packed["columns"]
    assert columns["obs"].shape == (3, 3) and columns["obs"].dtype == np.float32  # one array for the batch
    assert isinstance(columns["warm"], list)  # a None among the arrays: kept per row
    back = unpack_rows(packed)
    assert [r.keys() for r in back] == [r.keys() for r in rows]
    for got, sent in zip(back, rows):
        np.testing.assert_array_equal(got["obs"], sent["obs"])
        assert got["obs"].dtype == np.float32 and got["obs"].base is None  # a copy: keeps no batch alive
        assert (got["warm"] is None) == (sent["warm"] is None) and got["t"] == sent["t"]
        assert got["response"] == sent["response"]


def test_rows_that_cannot_be_columns_travel_as_they_are() -> None:
    mixed = [{"agent_id": "a", "obs": np.zeros(2)}, {"agent_id": "b"}]  # different keys
    assert pack_rows(mixed) == mixed and unpack_rows(mixed) == mixed
    shapes = [{"x": np.zeros(2)}, {"x": np.zeros(3)}]  # one field, two shapes: a list
    assert [r["x"].shape for r in unpack_rows(pack_rows(shapes))] == [(2,), (3,)]
    assert pack_rows([]) == [] and unpack_rows([]) == []


class _Method:
    def __init__(self, calls: list, name: str) -> None:
        self.calls, self.name = calls, name

    def remote(self, arg: object) -> str:
        self.calls.append((self.name, arg))
        return "ref"


class _OldShard:
    """An actor handle from before the columnar calls: ``put`` only."""

    def __init__(self) -> None:
        self.calls: list = []
        self.put = _Method(self.calls, "put")


class _NewShard(_OldShard):
    def __init__(self) -> None:
        super().__init__()
        self.put_columns = _Method(self.calls, "put_columns")


def test_rows_go_as_columns_only_to_actors_that_take_them() -> None:
    rows = [_row(i, None) for i in range(2)]
    old, new = _OldShard(), _NewShard()
    assert send_rows(old, "put", rows) == send_rows(new, "put", rows) == "ref"
    assert old.calls == [("put", rows)]  # an actor still running older code gets the list it understands
    (name, packed), = new.calls
    assert name == "put_columns" and packed["rows"] == 2
