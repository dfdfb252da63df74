"""The ``scene`` column (schema version 3): round trips, and files of versions 1-2 read with scene ""."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.worldmodel.test_data import assert_equal, make_transitions, sorted_rows, write_bad
from worldmodel.data import SchemaError, TrajectoryWriter, Transitions, read_transitions, write_transitions
from worldmodel.data import schema as sc
from worldmodel.data.compact import compact


def with_scene(tr: Transitions, scene: np.ndarray | str) -> Transitions:
    return Transitions.build(tr.obs, tr.actions, tr.rewards, tr.new_obs, tr.terminateds, tr.truncateds, tr.eps_id,
                             tr.agent_id, tr.t, tr.model_version, tr.timestamp, scene=scene)


def version_2_table(tr: Transitions) -> pa.Table:
    """How schema version 2 stored these rows: no scene column."""
    table = tr.to_table().drop_columns([sc.SCENE])
    return table.replace_schema_metadata({**table.schema.metadata, sc.META_SCHEMA_VERSION: b"2"})


def test_build_defaults_scene_to_empty_and_broadcasts_a_scalar():
    tr = make_transitions(5, seed=1)
    assert tr.scene.dtype == object and tr.scene.tolist() == [""] * 5
    assert with_scene(tr, "warehouse-3-0").scene.tolist() == ["warehouse-3-0"] * 5
    with pytest.raises(ValueError, match="column 'scene' has 4 rows, expected 5"):
        with_scene(tr, np.array(["a"] * 4, dtype=object))


def test_scene_round_trips_through_the_log(tmp_path):
    tr = make_transitions(40, seed=2)
    tr = with_scene(tr, np.array(["warehouse-0-0", "warehouse-0-1", ""], dtype=object)[np.arange(40) % 3])
    write_transitions(str(tmp_path), tr, env_id="Warehouse-v1")
    schema = pq.read_schema(next(tmp_path.rglob("*.parquet")))
    assert schema.field(sc.SCENE).type == pa.string() and schema.metadata[sc.META_SCHEMA_VERSION] == b"3"
    assert_equal(read_transitions(str(tmp_path)), sorted_rows(tr))


@pytest.mark.parametrize("version", [b"1", b"2"])
def test_older_files_read_with_an_empty_scene_beside_new_ones(tmp_path, version):
    old, new = make_transitions(30, seed=3), with_scene(make_transitions(20, seed=4), "warehouse-7-0")
    table = version_2_table(old)
    if version == b"1":
        table = table.set_column(table.schema.get_field_index(sc.TIMESTAMP), sc.TIMESTAMP,
                                 pa.array(old.timestamp, sc.LEGACY_TIMESTAMP_TYPE))
        table = table.replace_schema_metadata({**table.schema.metadata, sc.META_SCHEMA_VERSION: b"1"})
    write_bad(tmp_path, table)
    write_transitions(str(tmp_path), new)
    assert_equal(read_transitions(str(tmp_path)), sorted_rows(Transitions.concat([old, new])))


def test_a_version_3_file_without_scene_is_rejected(tmp_path):
    table = make_transitions(10, seed=5).to_table().drop_columns([sc.SCENE])
    name = write_bad(tmp_path, table)
    with pytest.raises(SchemaError, match=f"{name}: missing column 'scene'"):
        read_transitions(str(tmp_path))


def test_compaction_of_mixed_versions_keeps_scenes(tmp_path):
    day = ("2026-11-23",)
    old = make_transitions(20, seed=6, days=day)
    new = with_scene(make_transitions(20, seed=7, days=day), "warehouse-1-2")
    (tmp_path / day[0]).mkdir()
    pq.write_table(version_2_table(old), tmp_path / day[0] / "part-old.parquet")
    writer = TrajectoryWriter(str(tmp_path))
    writer.write_file(writer.plan_by_day(new)[0])
    merged = compact(str(tmp_path), day[0], dry_run=False)
    assert pq.read_schema(merged.output).metadata[sc.META_SCHEMA_VERSION] == b"3"
    assert_equal(read_transitions(str(tmp_path)), sorted_rows(Transitions.concat([old, new])))
