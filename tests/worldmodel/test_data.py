"""Round trips and failure modes of the trajectory log writer and reader."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from worldmodel.data import (
    SchemaError,
    TrajectoryWriter,
    Transitions,
    check_writable,
    data_fingerprint,
    list_log_files,
    read_env_id,
    read_transitions,
    write_transitions,
)
from worldmodel.data import schema as sc
from worldmodel.data.writer import RunLedger

S, A = 6, 2


def make_transitions(b: int, seed: int, agents=("car-1", "car_2.b"), days=("2026-11-23", "2026-11-24")) -> Transitions:
    """B rows spread over the given agents and UTC days, with distinct episodes per seed."""
    rng = np.random.default_rng(seed)
    day = np.array(days, dtype="datetime64[D]")[rng.integers(0, len(days), b)]
    # Microsecond offsets inside the day check the timestamp round trip to the microsecond.
    timestamp = day.astype("datetime64[us]") + rng.integers(0, 86_400_000_000, b).astype("timedelta64[us]")
    return Transitions.build(
        obs=rng.normal(size=(b, S)),
        actions=rng.normal(size=(b, A)),
        rewards=rng.normal(size=b),
        new_obs=rng.normal(size=(b, S)),
        terminateds=rng.random(b) < 0.3,
        truncateds=rng.random(b) < 0.3,
        eps_id=[f"eps-{seed}-{i % 5}" for i in range(b)],
        agent_id=np.array(agents, dtype=object)[rng.integers(0, len(agents), b)],
        t=np.arange(b) // 5,
        model_version=np.array(["", "v1", "v2 ünïcode"], dtype=object)[rng.integers(0, 3, b)],
        timestamp=timestamp,
    )


def sorted_rows(tr: Transitions) -> Transitions:
    order = np.lexsort((tr.timestamp, tr.t, tr.eps_id.astype(str), tr.agent_id.astype(str)))
    return tr.select(order)


def assert_equal(a: Transitions, b: Transitions) -> None:
    assert len(a) == len(b)
    for f in dataclasses.fields(Transitions):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.dtype == y.dtype, f.name
        np.testing.assert_array_equal(x, y, err_msg=f.name)


def visible_files(root) -> list[str]:
    return sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names)


def valid_table(b: int = 4, obs_dim: int = S) -> pa.Table:
    z = np.zeros
    return Transitions.build(
        z((b, obs_dim)), z((b, A)), z(b), z((b, obs_dim)), z(b), z(b), ["e"] * b, "x", np.arange(b)
    ).to_table()


def test_round_trip_multiple_agents_days_and_appends(tmp_path):
    writer = TrajectoryWriter(str(tmp_path), env_id="Pendulum-v1")
    first, second = make_transitions(200, seed=1), make_transitions(150, seed=2)
    paths = writer.write(first) + writer.write(second)
    assert len(paths) == 8  # 2 agents x 2 days x 2 appends

    got = read_transitions(str(tmp_path))
    assert_equal(got, sorted_rows(Transitions.concat([first, second])))
    assert read_env_id(str(tmp_path)) == "Pendulum-v1"
    assert list_log_files(str(tmp_path)) == sorted(paths)


def test_files_land_in_date_agent_tree_without_temp_files(tmp_path):
    tr = make_transitions(100, seed=3)
    paths = write_transitions(str(tmp_path), tr)
    assert visible_files(tmp_path) == sorted(paths)  # nothing else, hidden temp files included
    for path in paths:
        day, agent, name = os.path.relpath(path, tmp_path).split(os.sep)
        assert name.startswith("part-") and name.endswith(".parquet")
        rows = read_transitions(os.path.dirname(path))
        assert set(rows.agent_id) == {agent}
        assert set(rows.timestamp.astype("datetime64[D]").astype(str)) == {day}
    assert pq.ParquetFile(paths[0]).metadata.row_group(0).column(0).compression == "ZSTD"


def test_empty_write_writes_nothing(tmp_path):
    empty = make_transitions(10, seed=4).select(np.zeros(0, dtype=int))
    assert write_transitions(str(tmp_path), empty) == []
    assert visible_files(tmp_path) == []


def test_crash_during_publish_leaves_no_visible_file(tmp_path, monkeypatch):
    before = make_transitions(50, seed=5)
    write_transitions(str(tmp_path), before)
    files_before = visible_files(tmp_path)

    def crash(src, dst):
        raise OSError(f"simulated crash renaming {src}")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        write_transitions(str(tmp_path), make_transitions(50, seed=6))
    monkeypatch.undo()

    assert visible_files(tmp_path) == files_before
    assert_equal(read_transitions(str(tmp_path)), sorted_rows(before))


def test_hidden_and_underscore_files_are_ignored(tmp_path):
    write_transitions(str(tmp_path), make_transitions(20, seed=7))
    (tmp_path / ".part-half.parquet.tmp").write_bytes(b"half")
    (tmp_path / "_temporary").mkdir()
    (tmp_path / "_temporary" / "x.parquet").write_bytes(b"half")
    (tmp_path / "2026-11-24" / ".hidden.parquet").write_bytes(b"half")
    assert len(read_transitions(str(tmp_path))) == 20


@pytest.mark.parametrize("agent_id", ["", "../escape", "a/b", ".hidden", "_tmp", "x" * 129, "sp ace", "a1\n"])
def test_invalid_agent_id_rejected(tmp_path, agent_id):
    tr = dataclasses.replace(make_transitions(3, seed=8), agent_id=np.full(3, agent_id, dtype=object))
    with pytest.raises(ValueError, match="agent_id") as info:
        write_transitions(str(tmp_path), tr)
    assert repr(agent_id) in str(info.value)
    assert visible_files(tmp_path) == []


def test_missing_or_empty_root(tmp_path):
    missing = str(tmp_path / "nope")
    assert list_log_files(missing) == []
    for fn in (read_transitions, data_fingerprint, read_env_id):
        with pytest.raises(FileNotFoundError, match="no trajectory logs under .*nope"):
            fn(missing)
    with pytest.raises(FileNotFoundError, match="no trajectory logs"):
        read_transitions(str(tmp_path))


def write_bad(tmp_path, table: pa.Table, name: str = "bad.parquet") -> str:
    # "zz" sorts after the writer's agents, so the good files come first.
    path = tmp_path / "2026-11-24" / "zz" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return name


def with_column(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, array)


def test_schema_error_wrong_type(tmp_path):
    write_transitions(str(tmp_path), make_transitions(10, seed=9))
    good = valid_table()
    doubles = pa.array(good.column(sc.OBS).to_pylist(), pa.list_(pa.float64()))
    name = write_bad(tmp_path, with_column(good, sc.OBS, doubles))
    # Parquet renames the list child "item" to "element"; accept either.
    expected = rf"{name}: column 'obs' has type list<\w+: double>, expected fixed_size_list<float>\[6\]"
    with pytest.raises(SchemaError, match=expected):
        read_transitions(str(tmp_path))


def test_schema_error_missing_column(tmp_path):
    name = write_bad(tmp_path, valid_table().drop_columns([sc.REWARDS]))
    with pytest.raises(SchemaError, match=f"{name}: missing column 'rewards'"):
        read_transitions(str(tmp_path))


def test_schema_error_not_parquet(tmp_path):
    write_transitions(str(tmp_path), make_transitions(10, seed=10))
    (tmp_path / "2026-11-24" / "junk.parquet").write_text("not parquet at all")
    with pytest.raises(SchemaError, match="junk.parquet: not a Parquet file"):
        read_transitions(str(tmp_path))


def test_schema_error_inconsistent_dims_across_files(tmp_path):
    write_transitions(str(tmp_path), make_transitions(10, seed=11))
    name = write_bad(tmp_path, valid_table(obs_dim=4), name="zz.parquet")
    with pytest.raises(SchemaError, match=f"{name}: column 'obs' has 4 values per row but other files have 6"):
        read_transitions(str(tmp_path))


def test_schema_error_new_obs_size_differs_from_obs(tmp_path):
    good, small = valid_table(), valid_table(obs_dim=4)
    name = write_bad(tmp_path, with_column(good, sc.NEW_OBS, small.column(sc.NEW_OBS)))
    with pytest.raises(SchemaError, match=f"{name}: column 'new_obs' has 4 values per row, expected 6"):
        read_transitions(str(tmp_path))


def test_schema_error_wrong_version(tmp_path):
    good = valid_table()
    metadata = {**good.schema.metadata, sc.META_SCHEMA_VERSION: b"9"}
    name = write_bad(tmp_path, good.replace_schema_metadata(metadata))
    with pytest.raises(SchemaError, match=f"{name}: metadata 'fleetwm.schema_version' says schema version 9"):
        read_transitions(str(tmp_path))


def test_extra_columns_are_ignored(tmp_path):
    tr = make_transitions(10, seed=12)
    table = tr.to_table()
    table = table.append_column("debug", pa.array(range(10))).replace_schema_metadata(table.schema.metadata)
    write_bad(tmp_path, table, name="extra.parquet")
    assert_equal(read_transitions(str(tmp_path)), sorted_rows(tr))


def test_fingerprint_stable_and_sensitive(tmp_path):
    write_transitions(str(tmp_path), make_transitions(30, seed=13))
    fp = data_fingerprint(str(tmp_path))
    assert fp.startswith("sha256:") and len(fp) == len("sha256:") + 64
    assert data_fingerprint(str(tmp_path)) == fp
    assert data_fingerprint(f"file://{tmp_path}") == fp  # same files, other spelling of the root

    write_transitions(str(tmp_path), make_transitions(5, seed=14))
    fp_added = data_fingerprint(str(tmp_path))
    assert fp_added != fp

    victim = list_log_files(str(tmp_path))[0]
    data = bytearray(open(victim, "rb").read())
    data[10] ^= 0xFF
    open(victim, "wb").write(bytes(data))
    assert data_fingerprint(str(tmp_path)) not in (fp, fp_added)


def test_file_uri_root(tmp_path):
    tr = make_transitions(40, seed=15)
    paths = write_transitions(f"file://{tmp_path}", tr)
    assert all(p.startswith(str(tmp_path)) for p in paths)
    assert visible_files(tmp_path) == sorted(paths)
    assert_equal(read_transitions(f"file://{tmp_path}"), sorted_rows(tr))


def test_build_names_mismatched_column():
    b = 4
    args = dict(
        obs=np.zeros((b, S)), actions=np.zeros((b, A)), rewards=np.zeros(b), new_obs=np.zeros((b, S)),
        terminateds=np.zeros(b), truncateds=np.zeros(b), eps_id=["e"] * b, agent_id="a", t=np.arange(b),
    )
    Transitions.build(**args)
    wrong_lengths = [("rewards", np.zeros(3)), ("t", np.arange(5)), ("eps_id", ["e"] * 3),
                     ("actions", np.zeros((3, A)))]
    for name, bad in wrong_lengths:
        with pytest.raises(ValueError, match=f"column '{name}'"):
            Transitions.build(**{**args, name: bad})


def test_explicit_non_local_filesystem_uses_direct_upload(tmp_path):
    # A SubTreeFileSystem is not "local", so it takes the object-store write path.
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    tr = make_transitions(30, seed=16)
    paths = TrajectoryWriter("logs", env_id="e", filesystem=fs).write(tr)
    assert all(p.startswith("logs/") for p in paths)
    assert visible_files(tmp_path) == sorted(str(tmp_path / p) for p in paths)
    assert_equal(read_transitions("logs", filesystem=fs), sorted_rows(tr))
    assert data_fingerprint("logs", filesystem=fs) == data_fingerprint(str(tmp_path / "logs"))
    with pytest.raises(ValueError, match="is a URI but a filesystem was also given"):
        read_transitions("file:///logs", filesystem=fs)


def test_timestamp_is_stored_as_int64_microseconds_utc(tmp_path):
    # RLlib's offline pipeline makes a tensor of every column it does not know; torch has no datetime type.
    tr = make_transitions(20, seed=17)
    path = TrajectoryWriter(str(tmp_path)).write(tr)[0]
    schema = pq.read_schema(path)
    assert schema.field(sc.TIMESTAMP).type == pa.int64()
    assert schema.metadata[sc.META_SCHEMA_VERSION] == sc.SCHEMA_VERSION.encode() == b"3"
    table = pq.read_table(path)
    part = Transitions.from_table(table)
    np.testing.assert_array_equal(table.column(sc.TIMESTAMP).to_numpy(), part.timestamp.astype(np.int64))
    assert str(part.timestamp.min())[:10] in ("2026-11-23", "2026-11-24")


def test_schema_version_1_files_are_still_read(tmp_path):
    old, new = make_transitions(30, seed=18), make_transitions(30, seed=19)
    table = old.to_table()
    legacy = pa.array(old.timestamp, sc.LEGACY_TIMESTAMP_TYPE)  # how version 1 stored the time
    table = with_column(table, sc.TIMESTAMP, legacy).drop_columns([sc.SCENE])  # version 1 had no scene
    write_bad(tmp_path, table.replace_schema_metadata({**table.schema.metadata, sc.META_SCHEMA_VERSION: b"1"}))
    write_transitions(str(tmp_path), new)
    assert_equal(read_transitions(str(tmp_path)), sorted_rows(Transitions.concat([old, new])))


def test_plan_names_the_files_that_write_file_publishes(tmp_path):
    writer = TrajectoryWriter(str(tmp_path))
    tr = make_transitions(40, seed=20)
    planned = writer.plan(tr)
    assert visible_files(tmp_path) == []  # planning writes nothing
    assert sum(len(p.rows) for p in planned) == len(tr) and len({p.path for p in planned}) == len(planned)
    assert [writer.write_file(p) for p in planned] == [p.path for p in planned]
    assert visible_files(tmp_path) == sorted(p.path for p in planned)
    assert_equal(read_transitions(str(tmp_path)), sorted_rows(tr))


def test_check_writable_probes_the_location(tmp_path):
    check_writable(str(tmp_path / "new" / "logs"))  # made, probed, left empty
    assert (tmp_path / "new" / "logs").is_dir() and os.listdir(tmp_path / "new" / "logs") == []
    (tmp_path / "a-file").write_text("not a directory")
    # Tests run as root, so a read-only mode would not stop a write: a regular file as a parent does.
    target = str(tmp_path / "a-file" / "logs")
    with pytest.raises(PermissionError, match=f"cannot write logs under '{target}': .*[Nn]ot a directory") as err:
        check_writable(target)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="'nosuchscheme://x' is not a local path or a URI pyarrow can open"):
        check_writable("nosuchscheme://x")


def test_run_ledger_counts_the_published_files_of_the_last_write(tmp_path):
    writer = TrajectoryWriter(str(tmp_path))
    ledger = RunLedger(writer, "run-1", ("written", "files"))
    assert ledger.read() == {"written": 0, "files": 0}  # a new run
    published, lost = writer.plan(make_transitions(20, seed=21, agents=("a",), days=("2026-11-24",)))[0], "x.parquet"
    ledger.write({"written": 7, "files": 2}, [(published.path, 20), (str(tmp_path / lost), 5)])
    writer.write_file(published)  # the second file never appeared (the writer died first)
    assert ledger.read() == {"written": 27, "files": 3}
    assert list_log_files(str(tmp_path)) == [published.path]  # the ledger is not a log
    (tmp_path / "_runs" / "run-1.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"run ledger .*run-1.json is malformed"):
        ledger.read()


def test_plan_by_day_writes_one_file_per_day_with_the_agent_a_column(tmp_path):
    data = make_transitions(60, seed=21)
    writer = TrajectoryWriter(str(tmp_path), env_id="Nav2D-v0")
    files = [writer.write_file(p, {b"fleetwm.test": b"x"}) for p in writer.plan_by_day(data)]
    assert sorted(os.path.relpath(f, tmp_path).split("/")[0] for f in files) == ["2026-11-23", "2026-11-24"]
    assert all(len(os.path.relpath(f, tmp_path).split("/")) == 2 for f in files)  # no agent directory
    assert pq.read_schema(files[0]).metadata[b"fleetwm.test"] == b"x"
    # Both layouts side by side read as one log.
    more = make_transitions(20, seed=22)
    writer.write(more)
    assert_equal(read_transitions(str(tmp_path)), sorted_rows(Transitions.concat([data, more])))


def test_compaction_keeps_every_row_once_even_when_it_stops_before_deleting(tmp_path):
    import shutil

    from worldmodel.data.compact import compact

    writer = TrajectoryWriter(str(tmp_path))
    parts = [make_transitions(30, seed=30 + i, days=("2026-11-23",)) for i in range(4)]
    for part in parts[:3]:
        writer.write_file(writer.plan_by_day(part)[0])
    writer.write(parts[3])  # the per-agent layout is merged too
    expected = sorted_rows(Transitions.concat(parts))
    dry = compact(str(tmp_path), "2026-11-23")
    assert dry.dry_run and dry.output is None and len(dry.inputs) == 5 and dry.rows == 120
    assert len(list_log_files(str(tmp_path))) == 5
    # A crash after publishing the merged file, before deleting the inputs (put back): readers skip the inputs.
    shutil.copytree(tmp_path / "2026-11-23", tmp_path / "copy")
    first = compact(str(tmp_path), "2026-11-23", dry_run=False)
    shutil.copytree(tmp_path / "copy", tmp_path / "2026-11-23", dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "copy")
    assert list_log_files(str(tmp_path)) == [first.output]
    assert_equal(read_transitions(str(tmp_path)), expected)
    # More rows arrive; the next compaction merges them with the merged file and removes the leftovers.
    late = make_transitions(10, seed=40, days=("2026-11-23",))
    writer.write_file(writer.plan_by_day(late)[0])
    second = compact(str(tmp_path), "2026-11-23", dry_run=False)
    assert len(second.leftovers) == 5 and len(second.inputs) == 2
    assert [f for f in visible_files(tmp_path / "2026-11-23") if f.endswith(".parquet")] == [second.output]
    assert_equal(read_transitions(str(tmp_path)), sorted_rows(Transitions.concat([*parts, late])))
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        compact(str(tmp_path), "23-11-2026")
