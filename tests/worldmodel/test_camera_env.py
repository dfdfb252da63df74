"""PixelNav2D and its renderer: known pixels first, then the env's spaces, determinism and its spec."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from worldmodel.envs import IMAGE_KEY, PIXEL_NAV2D_ID, PROPRIO_KEY, SpaceSpec, make_env, space_spec
from worldmodel.envs.camera import STATE_INFO
from worldmodel.envs.camera_render import (AGENT_COLOUR, BACKGROUND, GOAL_COLOUR, OCCLUDED, ZONE_COLOUR, Camera,
                                           contact_sheet, corrupt, render)
from worldmodel.envs.nav2d import VEL_DIMS

CAMERA = Camera()
FAR = np.array([[-9.0, -9.0]])  # a corner nothing else is drawn near
NO_ZONES = np.zeros((1, 0, 3))


def colour_at(frames: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """The (B, 3) colours of frames (B, H, W, 3) at one (row, col) per frame (B, 2)."""
    return frames[np.arange(len(frames)), pixels[:, 0], pixels[:, 1]]


def test_the_agent_is_drawn_at_its_pixel_for_a_batch_of_positions() -> None:
    pos = np.random.default_rng(0).uniform(-9.5, 9.5, size=(50, 2))
    frames = render(pos, np.repeat(FAR, 50, 0), np.zeros((50, 0, 3)), CAMERA)
    assert frames.shape == (50, 64, 64, 3) and frames.dtype == np.uint8
    # A pixel's centre is at most half a diagonal (0.22) from any point inside it, well within the disc.
    assert (colour_at(frames, CAMERA.pixel(pos)) == AGENT_COLOUR).all()
    blue = (frames == AGENT_COLOUR).all(axis=-1).sum(axis=(1, 2))  # (B,)
    assert ((blue >= 4) & (blue <= 13)).all()  # a disc of radius 0.5 covers about 8 pixels of 0.3125


def test_the_image_is_y_up_with_the_arena_filling_it() -> None:
    corners = np.array([[-9.9, 9.9], [9.9, 9.9], [-9.9, -9.9], [9.9, -9.9]])
    assert CAMERA.pixel(corners).tolist() == [[0, 0], [0, 63], [63, 0], [63, 63]]
    frames = render(corners, np.zeros((4, 2)), np.zeros((4, 0, 3)), CAMERA)
    assert (frames[0, 0, 0] == AGENT_COLOUR).all() and (frames[0, 63, 63] == BACKGROUND).all()


def test_zones_are_filled_red_goals_green_and_padding_draws_nothing() -> None:
    zones = np.array([[[5.0, 5.0, 1.0], [0.0, 0.0, 0.0]]])  # the second row is padding
    frames = render(FAR, np.array([[-5.0, 5.0]]), zones, CAMERA)
    frame = frames[0]
    assert (frame[tuple(CAMERA.pixel(np.array([5.0, 5.0])))] == ZONE_COLOUR).all()
    assert (frame[tuple(CAMERA.pixel(np.array([-5.0, 5.0])))] == GOAL_COLOUR).all()
    red = (frame == ZONE_COLOUR).all(axis=-1).sum()
    pixel_area = (2 * CAMERA.arena / CAMERA.image_size) ** 2
    assert abs(red - np.pi / pixel_area) < 8  # a disc of radius 1: about 32 pixels
    assert not (frame[tuple(CAMERA.pixel(np.zeros(2)))] == ZONE_COLOUR).all()  # the padding row at the origin


def test_the_agent_is_painted_over_zones_and_goal() -> None:
    frames = render(np.array([[5.0, 5.0]]), np.array([[5.0, 5.0]]), np.array([[[5.0, 5.0, 1.0]]]), CAMERA)
    assert (frames[0][tuple(CAMERA.pixel(np.array([5.0, 5.0])))] == AGENT_COLOUR).all()


def test_a_batch_renders_as_its_frames_one_by_one() -> None:
    rng = np.random.default_rng(1)
    pos, goal = rng.uniform(-5, 5, (3, 2)), rng.uniform(-5, 5, (3, 2))
    zones = np.concatenate([rng.uniform(-5, 5, (3, 2, 2)), np.ones((3, 2, 1))], axis=-1)
    batch = render(pos, goal, zones, CAMERA)
    for i in range(3):
        np.testing.assert_array_equal(batch[i], render(pos[i:i + 1], goal[i:i + 1], zones[i:i + 1], CAMERA)[0])


def test_camera_noise_has_the_std_it_is_given() -> None:
    clean = render(np.repeat(FAR, 16, 0), np.repeat(FAR, 16, 0), np.zeros((16, 0, 3)), CAMERA)
    noisy = corrupt(clean, CAMERA, np.random.default_rng(0))
    diff = noisy.astype(np.float64) - clean
    assert abs(diff.mean()) < 0.05 and abs(diff.std() - CAMERA.pixel_noise) < 0.1
    perfect = Camera(pixel_noise=0.0)
    np.testing.assert_array_equal(corrupt(clean, perfect, np.random.default_rng(0)), clean)


def test_occlusion_blanks_one_square_patch_per_hit_frame() -> None:
    camera = Camera(pixel_noise=0.0, occlusion_prob=1.0, occlusion_size=10)
    clean = render(np.zeros((8, 2)), np.repeat(FAR, 8, 0), np.zeros((8, 0, 3)), camera)
    out = corrupt(clean, camera, np.random.default_rng(0))
    black = (out == OCCLUDED).all(axis=-1)  # (B, H, W)
    for mask in black:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        assert mask.sum() == 100 and len(rows) == len(cols) == 10 and np.ptp(rows) == np.ptp(cols) == 9
    half = corrupt(np.repeat(clean, 50, 0), Camera(pixel_noise=0.0, occlusion_prob=0.5), np.random.default_rng(1))
    hit = (half == OCCLUDED).all(axis=-1).any(axis=(1, 2)).mean()
    assert 0.35 < hit < 0.65


def test_env_observes_frames_alone_with_the_true_state_in_info() -> None:
    env = make_env(PIXEL_NAV2D_ID)
    obs, info = env.reset(seed=3)
    assert env.observation_space == gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and env.observation_space.contains(obs)
    assert info[STATE_INFO].shape == (6,) and len(info["no_fly_zones"]) == 2  # the default zones
    obs, _, _, _, info = env.step(np.ones(2, np.float32))
    agent = CAMERA.pixel(info[STATE_INFO][:2].astype(np.float64))
    # The agent's blue survives noise of std 8: its blue channel is far above anything else drawn there.
    assert obs[tuple(agent)][2] > 150 and obs[tuple(agent)][0] < 100


def test_proprio_gives_a_dict_of_the_frame_and_the_velocity_only() -> None:
    env = make_env(PIXEL_NAV2D_ID, proprio=True)
    obs, info = env.reset(seed=0)
    obs, *_, info = env.step(np.array([1.0, -1.0], np.float32))
    assert set(obs) == {IMAGE_KEY, PROPRIO_KEY} and env.observation_space.contains(obs)
    np.testing.assert_array_equal(obs[PROPRIO_KEY], info[STATE_INFO][VEL_DIMS])
    assert obs[PROPRIO_KEY].shape == (2,)


def test_frames_are_deterministic_given_the_seed() -> None:
    def frames(seed: int) -> np.ndarray:
        env = make_env(PIXEL_NAV2D_ID, occlusion_prob=0.3)
        out = [env.reset(seed=seed)[0]]
        out += [env.step(np.array([0.5, 0.5], np.float32))[0] for _ in range(5)]
        return np.stack(out)

    np.testing.assert_array_equal(frames(7), frames(7))
    assert not np.array_equal(frames(7), frames(8))


def test_options_are_checked_with_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown options \['fov'\]"):
        make_env(PIXEL_NAV2D_ID, fov=90)
    with pytest.raises(ValueError, match="occlusion_prob must be in \\[0, 1\\], got 2"):
        make_env(PIXEL_NAV2D_ID, occlusion_prob=2)
    env = make_env(PIXEL_NAV2D_ID, image_size=32, arena=8.0, num_no_fly_zones=0)
    obs, info = env.reset(seed=0)
    assert obs.shape == (32, 32, 3) and len(info["no_fly_zones"]) == 0


def test_space_spec_records_the_kind_and_round_trips() -> None:
    image = space_spec(make_env(PIXEL_NAV2D_ID), PIXEL_NAV2D_ID)
    both = space_spec(make_env(PIXEL_NAV2D_ID, proprio=True), PIXEL_NAV2D_ID)
    vector = space_spec(make_env("Nav2D-v0"), "Nav2D-v0")
    assert (image.obs_kind, image.obs_dim, image.image_shape) == ("image", 0, (64, 64, 3))
    assert (both.obs_kind, both.obs_dim, both.image_shape) == ("dict", 2, (64, 64, 3))
    assert (vector.obs_kind, vector.obs_dim, vector.image_shape) == ("vector", 6, None)
    for spec in (image, both, vector):
        assert SpaceSpec.from_dict(spec.to_dict()) == spec
    assert "image_shape" not in vector.to_dict()  # a vector spec.json is what it always was


def test_an_old_spec_json_still_loads() -> None:
    old = {"obs_dim": 6, "act_dim": 2, "act_low": [-1.0, -1.0], "act_high": [1.0, 1.0], "env_id": "Nav2D-v0"}
    spec = SpaceSpec.from_dict(old)
    assert spec.obs_kind == "vector" and spec.to_dict() == old
    with pytest.raises(ValueError, match="optionally 'image_shape'"):
        SpaceSpec.from_dict({**old, "pixels": 3})
    with pytest.raises(ValueError, match="obs_dim must be >= 1"):
        SpaceSpec.from_dict({**old, "obs_dim": 0})


class _Spaces(gymnasium.Env):
    def __init__(self, observation_space: gymnasium.Space) -> None:
        self.observation_space = observation_space
        self.action_space = gymnasium.spaces.Box(-1, 1, (2,), np.float32)


@pytest.mark.parametrize("space", [
    gymnasium.spaces.Box(0, 1, (64, 64, 3), np.float32),  # a float image
    gymnasium.spaces.Dict({"image": gymnasium.spaces.Box(0, 255, (8, 8, 3), np.uint8)}),  # no proprio
    gymnasium.spaces.Dict({"camera": gymnasium.spaces.Box(0, 255, (8, 8, 3), np.uint8),
                           "proprio": gymnasium.spaces.Box(-1, 1, (2,))}),
    gymnasium.spaces.Discrete(3),
])
def test_unsupported_observation_spaces_are_refused_by_name(space: gymnasium.Space) -> None:
    with pytest.raises(ValueError, match="Toy-v0 has observation space .* fleetwm needs a 1-D Box, a uint8 Box"):
        space_spec(_Spaces(space), "Toy-v0")


def test_contact_sheet_tiles_enlarged_frames() -> None:
    frames = np.stack([np.full((4, 4, 3), i, np.uint8) for i in range(5)])
    sheet = contact_sheet(frames, columns=3, scale=2, gap=1)
    assert sheet.shape == (2 * 8 + 1, 3 * 8 + 2, 3)
    assert (sheet[:8, 9:17] == 1).all() and (sheet[9:, 9:17] == 4).all() and (sheet[9:, 18:] == 255).all()
