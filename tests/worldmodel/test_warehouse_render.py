"""Warehouse pictures: a PNG of the floor with paths and contacts, frames of an episode, a GIF."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from worldmodel.envs.warehouse_layout import layout_for
from worldmodel.envs.warehouse_render import animate, draw_floor, floor_frames

T, N = 12, 3


def straight_paths() -> np.ndarray:
    """(T, N, 2) robots driving right along the bottom staging band, 1 m apart."""
    x = 1.0 + 0.2 * np.arange(T)[:, None] + np.zeros(N)
    y = 1.0 + np.arange(N)[None, :] + np.zeros((T, 1))
    return np.stack([x, y], axis=-1)


def red_pixels(frame: np.ndarray) -> int:
    return int(((frame[..., 0] > 180) & (frame[..., 1] < 80) & (frame[..., 2] < 80)).sum())


def test_draw_floor_writes_a_png_with_and_without_paths(tmp_path):
    layout = layout_for(10)
    contacts = np.zeros((T, N), int)
    contacts[5, 1] = 1
    humans = straight_paths()[:, :1] + np.array([0.0, 0.5])
    drawn = draw_floor(layout, straight_paths(), contacts, tmp_path / "floor.png", title="toy", humans=humans)
    empty = draw_floor(layout, path=tmp_path / "empty.png")
    for png in (drawn, empty):
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
    assert red_pixels(np.asarray(Image.open(drawn).convert("RGB"))) > 0  # the contact is marked
    assert red_pixels(np.asarray(Image.open(empty).convert("RGB"))) == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"paths": np.zeros((T, N))}, r"paths must be \(T, N, 2\)"),
    ({"paths": np.zeros((T, N, 2)), "collisions": np.zeros((T, N + 1))}, r"collisions of shape \(12, 4\)"),
    ({"collisions": np.zeros((T, N))}, "need paths"),
    ({"paths": np.zeros((T, N, 2)), "humans": np.zeros((T + 1, 2, 2))}, "humans must be"),
])
def test_draw_floor_names_a_shape_that_does_not_fit(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        draw_floor(layout_for(4), path=tmp_path / "x.png", **kwargs)


def test_frames_follow_the_robots_and_turn_a_robot_in_contact_red():
    layout, paths = layout_for(10), straight_paths()
    contacts = np.zeros((T, N), int)
    contacts[6:, 0] = 1
    frames = floor_frames(layout, paths, humans=paths[:, :1] + np.array([0.0, 0.5]), collisions=contacts, stride=3)
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[0] == 4 and frames.shape[-1] == 3
    assert not np.array_equal(frames[0], frames[1])  # the robots moved
    assert red_pixels(frames[1]) == 0 < red_pixels(frames[2])  # ticks 3 and 6: contact from tick 6 on
    with pytest.raises(ValueError, match="stride >= 1"):
        floor_frames(layout, paths, stride=0)


def test_animate_writes_every_frame_as_a_looping_gif(tmp_path):
    frames = np.zeros((5, 40, 60, 3), np.uint8)
    frames[np.arange(5), :, np.arange(5) * 10] = 255  # a moving bar: frames differ
    gif = animate(frames, tmp_path / "episode.gif", fps=5.0)
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames == 5 and image.size == (60, 40)
        assert image.info["duration"] == 200 and image.info["loop"] == 0
    with pytest.raises(ValueError, match=r"frames must be \(F >= 1, height, width, 3\) uint8"):
        animate(np.zeros((5, 40, 60)), tmp_path / "bad.gif")
