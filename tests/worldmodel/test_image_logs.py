"""Image logs: collected frames round-trip through Parquet, old and vector logs still read, Ray Data reads them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from tests.ray_fixtures import ray_local  # noqa: F401 (fixture)
from worldmodel.data import SchemaError, TrajectoryWriter, read_transitions, write_transitions
from worldmodel.data import schema as sc
from worldmodel.data.images import (META_IMAGE_SHAPE, NEW_OBS_IMAGE, OBS_IMAGE, ImageTransitions, image_type,
                                    read_image_transitions)
from worldmodel.envs import PIXEL_NAV2D_ID
from worldmodel.envs.collect import collect


@pytest.fixture(scope="module")
def frames_alone() -> ImageTransitions:
    return collect(PIXEL_NAV2D_ID, episodes=2, seed=0, env_kwargs={"occlusion_prob": 0.2})


@pytest.fixture(scope="module")
def with_proprio() -> ImageTransitions:
    return collect(PIXEL_NAV2D_ID, episodes=2, seed=1, agent_id="agent-0001", env_kwargs={"proprio": True})


def assert_same(a: ImageTransitions, b: ImageTransitions) -> None:
    np.testing.assert_array_equal(a.obs_image, b.obs_image)
    np.testing.assert_array_equal(a.new_obs_image, b.new_obs_image)
    for f in dataclasses.fields(a.rows):
        np.testing.assert_array_equal(getattr(a.rows, f.name), getattr(b.rows, f.name), err_msg=f.name)


def test_collected_frames_are_the_transitions_frames(frames_alone: ImageTransitions) -> None:
    rows = frames_alone.rows
    assert frames_alone.image_shape == (64, 64, 3) and rows.obs.shape == (len(rows), 0)
    same_episode = rows.eps_id[1:] == rows.eps_id[:-1]
    # The frame after a step is the frame before the next one: one camera frame, logged twice.
    after, before = frames_alone.new_obs_image[:-1], frames_alone.obs_image[1:]
    np.testing.assert_array_equal(after[same_episode], before[same_episode])
    assert not np.array_equal(frames_alone.obs_image, frames_alone.new_obs_image)


def test_frames_alone_round_trip_with_their_metadata(frames_alone: ImageTransitions, tmp_path: Path) -> None:
    files = TrajectoryWriter(str(tmp_path), env_id=PIXEL_NAV2D_ID).write(frames_alone)
    schema = pq.read_schema(files[0])
    assert schema.metadata[sc.META_SCHEMA_VERSION] == sc.IMAGE_SCHEMA_VERSION.encode() == b"4"
    assert schema.metadata[META_IMAGE_SHAPE] == b"64,64,3" and schema.metadata[sc.META_OBS_DIM] == b"0"
    assert schema.field(OBS_IMAGE).type == schema.field(NEW_OBS_IMAGE).type == pa.binary(64 * 64 * 3)
    assert sc.OBS not in schema.names and sc.NEW_OBS not in schema.names
    assert_same(read_image_transitions(str(tmp_path)), frames_alone)


def test_a_dict_log_round_trips_with_its_vector_part(with_proprio: ImageTransitions, tmp_path: Path) -> None:
    files = write_transitions(str(tmp_path), with_proprio)
    assert pq.read_schema(files[0]).field(sc.OBS).type.list_size == 2
    back = read_image_transitions(str(tmp_path))
    assert_same(back, with_proprio)
    assert back.rows.obs_dim == 2


@pytest.mark.parametrize("kind", ["frames_alone", "with_proprio"])
def test_readers_name_the_log_they_cannot_read(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    # The vector reader (and so training, retraining and compaction) refuses image logs rather than drop frames.
    write_transitions(str(tmp_path / "frames"), request.getfixturevalue(kind))
    with pytest.raises(SchemaError, match=r"holds camera frames \(schema version 4\); read it with .*read_image_trans"):
        read_transitions(str(tmp_path / "frames"))
    write_transitions(str(tmp_path / "vectors"), collect("Nav2D-v0", episodes=1, seed=0))
    with pytest.raises(SchemaError, match="no camera frames .* read it with read_transitions"):
        read_image_transitions(str(tmp_path / "vectors"))


def test_frames_of_different_shapes_do_not_mix(frames_alone: ImageTransitions, tmp_path: Path) -> None:
    write_transitions(str(tmp_path), frames_alone)
    small = collect(PIXEL_NAV2D_ID, episodes=1, seed=2, agent_id="small", env_kwargs={"image_size": 32})
    write_transitions(str(tmp_path), small)
    with pytest.raises(SchemaError, match=r"frames of shape \(\d+, \d+, 3\) but other files have"):
        read_image_transitions(str(tmp_path))


def test_vector_logs_are_unchanged(tmp_path: Path) -> None:
    data = collect("Nav2D-v0", episodes=1, seed=0)
    files = write_transitions(str(tmp_path), data)
    schema = pq.read_schema(files[0])
    assert schema.metadata[sc.META_SCHEMA_VERSION] == b"3" and META_IMAGE_SHAPE not in schema.metadata
    np.testing.assert_array_equal(read_transitions(str(tmp_path)).obs, data.obs)


def test_image_transitions_check_their_frames(frames_alone: ImageTransitions) -> None:
    rows = frames_alone.rows
    with pytest.raises(ValueError, match="obs_image must be a \\(B, H, W, C\\) uint8 array"):
        ImageTransitions(rows, frames_alone.obs_image.astype(np.float32), frames_alone.new_obs_image)
    with pytest.raises(ValueError, match=f"B = {len(rows)} rows"):
        ImageTransitions(rows, frames_alone.obs_image[:-1], frames_alone.new_obs_image[:-1])
    picked = frames_alone.select(np.arange(3))
    assert len(picked) == 3 and len(ImageTransitions.concat([picked, picked])) == 6
    assert image_type((64, 64, 3)) == pa.binary(12288)


def test_ray_data_reads_image_logs(ray_local, frames_alone: ImageTransitions, tmp_path: Path) -> None:  # noqa: F811
    write_transitions(str(tmp_path), frames_alone)
    rows = ray.data.read_parquet(str(tmp_path)).select_columns([sc.EPS_ID, sc.T, OBS_IMAGE]).take_all()
    assert len(rows) == len(frames_alone)
    key = (frames_alone.rows.eps_id[5], frames_alone.rows.t[5])
    row = next(r for r in rows if (r[sc.EPS_ID], r[sc.T]) == key)
    frame = np.frombuffer(row[OBS_IMAGE], np.uint8).reshape(frames_alone.image_shape)
    np.testing.assert_array_equal(frame, frames_alone.obs_image[5])
