"""The columnar form of record batches between actors: exact round trips, copies, and what stays a list."""

from __future__ import annotations

import numpy as np

from actors.common import pack_rows, unpack_rows


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
