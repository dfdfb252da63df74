"""The latent's structure with known answers: keypoints read a lit pixel's position, the dynamics moves
keypoints by a change and carries the zone map, the reward head is a distance between keypoints, and the
breach head reads the zone map where the agent is."""

from __future__ import annotations

import pytest
import torch

from worldmodel.keypoints import SpatialSoftmax
from worldmodel.latent import KEYPOINT_SCALE, LatentConfig, LatentWorldModel

CFG = LatentConfig(image_shape=(32, 32, 3), frames=2, keypoints=2, latent=8, simnorm_group=4, members=3,
                   hidden=16, depth=4, zone_grid=4)


def model() -> LatentWorldModel:
    torch.manual_seed(0)
    return LatentWorldModel(CFG)


def test_spatial_softmax_finds_a_lit_pixel() -> None:
    heat = torch.randn(1, 2, 33, 33) * 0.1  # a faint noisy floor: standardised, its scale does not matter
    heat[0, 0, 0, 32] += 5.0  # top right
    heat[0, 1, 16, 16] += 5.0  # centre
    points = SpatialSoftmax(2)(heat)  # (1, 4): x's then y's
    assert torch.allclose(points, torch.tensor([[1.0, 0.0, 1.0, 0.0]]), atol=3e-3)
    assert torch.allclose(SpatialSoftmax(2)(heat * 100 + 7), points, atol=1e-5)


def test_spatial_softmax_measures_a_blob_to_a_fraction_of_a_cell() -> None:
    """A blob moved a quarter of a cell at a time: the keypoint follows it in quarter-cell steps, where the
    coarse softmax alone would stay on the brightest cell."""
    torch.manual_seed(0)
    cells = torch.arange(33.0)
    centres = 16 + torch.arange(5) * 0.25  # (5,) in cells
    blob = torch.exp(-(cells[None, :] - centres[:, None]).square() / 2)  # (5, 33) one axis, std 1 cell
    heat = (blob[:, None, :] * torch.exp(-(cells - 10).square() / 2)[None, :, None])[:, None]  # (5, 1, 33, 33)
    x = SpatialSoftmax(1, init_scale=20.0)(heat + 0.01 * torch.randn_like(heat))[:, 0]  # (5,) in [-1, 1]
    moves = (x.diff() * 16).detach()  # in cells
    assert torch.allclose(moves, torch.full((4,), 0.25), atol=0.05), moves


def test_layout_of_the_latent() -> None:
    assert (CFG.points, CFG.moving, CFG.state_dim) == (8, 16, 32)
    z = model().encode(torch.randint(0, 256, (3, 2, 32, 32, 3), dtype=torch.uint8))
    assert z.shape == (3, CFG.state_dim)
    assert (z[:, :CFG.points].abs() <= KEYPOINT_SCALE).all()
    zones = z[:, CFG.moving:]
    assert ((zones >= 0) & (zones <= 1)).all()


def test_the_zone_map_classifies_each_blocks_colour_where_it_is() -> None:
    """zone_context 1: a 2x2 pixel block's colour changes its own grid cell of the map and no other, and one colour
    reads the same wherever it is painted (so a colour the breach flags call clear is clear under the agent too)."""
    m = model().eval()
    frames = torch.full((1, 2, 32, 32, 3), 128, dtype=torch.uint8)
    painted = frames.clone()
    painted[0, -1, 0:2, 0:2] = torch.tensor([200, 30, 30], dtype=torch.uint8)  # the top-left block of the last frame
    with torch.no_grad():
        before, after = (m.encode(x)[0, CFG.moving:].view(4, 4) for x in (frames, painted))
        changed = (after - before).abs() > 1e-7
    assert changed[0, 0] and changed.sum() == 1
    elsewhere = frames.clone()
    elsewhere[0, -1, 16:18, 16:18] = torch.tensor([200, 30, 30], dtype=torch.uint8)  # the same block in cell (2, 2)
    with torch.no_grad():
        moved = m.encode(elsewhere)[0, CFG.moving:].view(4, 4)
    assert torch.allclose(moved[2, 2] - before[2, 2], after[0, 0] - before[0, 0], atol=1e-6)
    with pytest.raises(ValueError, match="zone_context"):
        LatentConfig(zone_context=2)


def test_dynamics_moves_keypoints_by_a_change_and_carries_the_zone_map() -> None:
    m = model()
    with torch.no_grad():
        last = m.dynamics.net[-1]
        last.weight.zero_()
        last.bias.zero_()
        last.bias[:, :CFG.points] = 0.25  # every member predicts the same change of every keypoint
    z = torch.rand(5, CFG.state_dim)
    nxt = m.next(z, torch.zeros(5, 2))  # (E, B, Z)
    assert torch.allclose(nxt[..., :CFG.points], z[:, :CFG.points] + 0.25)
    assert torch.equal(nxt[..., CFG.moving:], z[:, CFG.moving:].expand(CFG.members, -1, -1))
    assert torch.allclose(nxt[..., CFG.points:CFG.moving], torch.full((3, 5, 8), 0.25))  # SimNorm of zeros
    assert torch.allclose(m.disagreement(nxt), torch.zeros(5))


def test_reward_head_is_a_distance_between_keypoints() -> None:
    head = model().reward_head
    with torch.no_grad():
        head.maps.weight.zero_()
        head.maps.bias.zero_()
        head.maps.weight[0, 0], head.maps.weight[0, 1] = 1.0, -1.0  # agent x - goal x
        head.maps.weight[1, 2], head.maps.weight[1, 3] = 1.0, -1.0  # agent y - goal y
    z = torch.zeros(2, CFG.state_dim)
    z[0, :4] = torch.tensor([3.0, 0.0, 4.0, 0.0])  # frame 0: agent (3, 4), goal (0, 0)
    assert torch.allclose(head(z), torch.tensor([-5.0, 0.0]), atol=1e-3)


def test_breach_head_reads_the_zone_map_where_the_agent_is() -> None:
    head = model().breach_head
    g = CFG.zone_grid
    z = torch.zeros(3, CFG.state_dim)
    zones = torch.zeros(3, g, g)
    zones[:, 0, g - 1] = 1.0  # one zone in the top right cell
    z[:, CFG.moving:] = zones.flatten(1)
    corner = KEYPOINT_SCALE * (1 - 1 / g)  # that cell's centre
    # The head reads the map at each of the last frame's keypoints (frame 1: entries 4..7).
    z[0, 4:8] = torch.tensor([corner, corner, corner, corner])  # in the zone
    z[1, 4:8] = torch.tensor([-corner, -corner, -corner, -corner])  # the opposite corner
    z[2, 4:8] = torch.tensor([corner, corner, -corner, -corner])  # the bottom right: a cell away and more
    with torch.no_grad():
        head.weight.fill_(1.0)  # every keypoint is the agent here: any reading counts
        head.bias.fill_(-0.5)
    logit = head(z)
    assert logit[0] > 2 and logit[1] < -3 and logit[2] < -3, logit


def test_breach_head_reads_each_agents_own_map_in_planning_as_from_the_whole_latent() -> None:
    """Planning's reading (rollouts of the moving part, every agent's map apart) is the whole latent's reading."""
    torch.manual_seed(0)
    head = model().breach_head
    n, r, x = 3, 4, 2  # agents, rollouts per agent, leading axis
    maps = torch.rand(n, CFG.zone_grid ** 2)  # (N, G*G) a different map per agent
    z = torch.randn(x, n, r, CFG.state_dim) * KEYPOINT_SCALE / 2
    z[..., CFG.moving:] = maps[:, None]  # each agent's rollouts carry its own map
    with torch.no_grad():
        whole, planning = head(z), head(z[..., :CFG.moving], maps)
    assert planning.shape == (x, n, r) and torch.allclose(planning, whole, atol=1e-5)
    with pytest.raises(ValueError, match="zone_map must be"):
        head(z[..., :CFG.moving], maps[:2])
