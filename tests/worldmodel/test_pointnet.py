"""The PointNet encoder (permutation and padding invariance, shapes) and the warehouse LiDAR point sets
(a hand-made floor with known points, agreement with the observation's slots), then a tiny model that
learns a robot's clearance from its points, which the same net shown no points cannot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldmodel.envs.warehouse import (
    KIND_HUMAN,
    KIND_ROBOT,
    NEIGHBOUR_DIMS,
    NEIGHBOURS,
    POS_DIMS,
    SLOT_KIND,
    SLOT_POS,
    SLOT_SIZE,
    VEL_DIMS,
    WarehouseFloor,
)
from worldmodel.envs.warehouse_layout import Layout
from worldmodel.envs.warehouse_lidar import (
    LIDAR,
    POINT_DIM,
    POINT_HUMAN,
    POINT_POS,
    POINT_ROBOT,
    POINT_SURFACE,
    POINT_VEL,
    LidarConfig,
    clearance,
    lidar_from_step,
    lidar_points,
)
from worldmodel.pointnet import PointNetEncoder, PointSetNet

FLOOR = Layout(10.0, 10.0, [[6.0, 4.0, 7.0, 8.0]], stations=[[1.0, 1.0]], picks=[[9.0, 9.0]])


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _sets(*lead: int, points: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(*lead, points, generator=g) < 0.7
    return torch.randn(*lead, points, POINT_DIM, generator=g, dtype=torch.float64), mask


def _encoder() -> PointNetEncoder:
    torch.manual_seed(0)
    return PointNetEncoder(POINT_DIM, latent_dim=16, hidden=32).double()


def test_encoder_is_permutation_invariant() -> None:
    enc, (points, mask) = _encoder(), _sets(3, 5)
    perm = torch.randperm(points.shape[-2], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(enc(points[..., perm, :], mask[..., perm]), enc(points, mask), atol=1e-6, rtol=0)


def test_padded_points_change_nothing() -> None:
    enc, (points, mask) = _encoder(), _sets(4)
    junk = 100.0 * torch.randn(4, 6, POINT_DIM, dtype=torch.float64)  # anything finite, far outside the data
    padded = enc(torch.cat([points, junk], -2), torch.cat([mask, torch.zeros(4, 6, dtype=torch.bool)], -1))
    torch.testing.assert_close(padded, enc(points, mask), atol=1e-6, rtol=0)
    # What a padded slot holds does not matter either, nor does an empty set see its padding.
    torch.testing.assert_close(enc(torch.where(mask[..., None], points, -junk[:, :1]), mask), enc(points, mask))
    empty = torch.zeros_like(mask)
    torch.testing.assert_close(enc(points, empty), enc(junk[:, :3], empty[:, :3]))


@pytest.mark.parametrize("lead", [(), (7,), (2, 3, 4)])
def test_encoder_batches_over_any_leading_dims(lead: tuple[int, ...]) -> None:
    enc, (points, mask) = _encoder(), _sets(*lead)
    z = enc(points, mask)
    assert z.shape == (*lead, 16) and torch.isfinite(z).all()
    flat = enc(points.reshape(-1, *points.shape[-2:]), mask.reshape(-1, mask.shape[-1]))
    torch.testing.assert_close(z.reshape(-1, 16), flat)
    z.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_encoder_and_net_errors_name_the_problem() -> None:
    enc, (points, mask) = _encoder(), _sets(2)
    with pytest.raises(ValueError, match=r"points must be \(\.\.\., P, 7\)"):
        enc(points[..., :3], mask)
    with pytest.raises(ValueError, match="mask must be bool of shape"):
        enc(points, mask.double())
    with pytest.raises(ValueError, match="latent_dim must be an int >= 1"):
        PointNetEncoder(POINT_DIM, 0)
    with pytest.raises(ValueError, match=r"own must be \(\.\.\., 4\)"):
        PointSetNet(4, POINT_DIM).double()(torch.zeros(2, 3, dtype=torch.float64), points, mask)
    with pytest.raises(ValueError, match="beams must be an int >= 1"):
        LidarConfig(beams=0)


def _hand_made() -> tuple[torch.Tensor, ...]:
    """Robot 0 at (5, 6) moving right, 1 m right of the shelf's face x = 6; robot 1 at rest 1 m to its left;
    a human 2.5 m above it; robot 2 far away (out of reach)."""
    pos = _t([[5.0, 6.0], [4.0, 6.0], [1.0, 1.0]])
    vel = _t([[0.5, 0.0], [0.0, 0.0], [0.0, 0.0]])
    human_pos, human_vel = _t([[5.0, 8.5]]), _t([[0.0, -1.0]])
    return pos, vel, torch.cat([pos, human_pos]), torch.cat([vel, human_vel])


def test_lidar_of_a_hand_made_floor() -> None:
    pos, vel, others_pos, others_vel = _hand_made()
    kind = [KIND_ROBOT, KIND_ROBOT, KIND_ROBOT, KIND_HUMAN]
    seen = lidar_points(pos, vel, others_pos, others_vel, kind, FLOOR)
    c, p = LIDAR.agents, LIDAR.points
    assert seen.points.shape == (3, p, POINT_DIM) and seen.mask.shape == (3, p)
    # Agents, nearest first: robot 1 at 1 m (a robot at rest: relative velocity minus ours), then the human.
    points, mask = seen.points[0], seen.mask[0]
    assert mask[:c].tolist() == [True, True] + [False] * (c - 2)
    np.testing.assert_allclose(points[0, POINT_POS], [-1.0, 0.0])
    np.testing.assert_allclose(points[0, POINT_VEL], [-0.5, 0.0])
    np.testing.assert_allclose(points[1, POINT_POS], [0.0, 2.5])
    np.testing.assert_allclose(points[1, POINT_VEL], [-0.5, -1.0])
    assert points[0, POINT_ROBOT] == 1 and points[1, POINT_HUMAN] == 1 and points[:2, POINT_SURFACE].sum() == 0
    assert torch.all(points[2:c] == 0)
    # Beams: the first and last, either side of +x, meet the shelf's face at x = 6, 1 m ahead; the wall
    # behind (x = 0, 5 m away) is out of reach, so the beams that way see nothing.
    beams, hit = points[c:], mask[c:]
    assert hit[0] and hit[-1] and not hit[LIDAR.beams // 2]
    np.testing.assert_allclose(beams[[0, -1]][:, 0], [1.0, 1.0])
    assert torch.all(beams[hit][:, POINT_SURFACE] == 1) and torch.all(beams[~hit] == 0)
    np.testing.assert_allclose(beams[hit][:, POINT_VEL], np.tile([-0.5, 0.0], (int(hit.sum()), 1)))
    # Every return lies on the shelf's boundary, within reach.
    world = pos[0] + beams[hit][:, POINT_POS]
    inside = (world >= _t([6.0, 4.0]) - 1e-9) & (world <= _t([7.0, 8.0]) + 1e-9)
    on_face = torch.isclose(world, _t([6.0, 4.0])) | torch.isclose(world, _t([7.0, 8.0]))
    assert inside.all() and on_face.any(-1).all()
    assert torch.all(beams[hit][:, POINT_POS].norm(dim=-1) <= LIDAR.reach)
    # Robot 2 at (1, 1) sees no agent, only the walls 1 m away.
    assert not seen.mask[2, :c].any() and seen.mask[2, c:].any()
    np.testing.assert_allclose(clearance(pos, others_pos, kind, FLOOR)[:2], [0.4, 0.4])


def test_lidar_batches_over_ticks_and_follows_the_dtype() -> None:
    pos, vel, others_pos, others_vel = _hand_made()
    kind = [KIND_ROBOT, KIND_ROBOT, KIND_ROBOT, KIND_HUMAN]
    shift = _t([0.5, -0.3])
    ticks = [(pos, vel, others_pos, others_vel), (pos + shift, -vel, others_pos + shift, -others_vel)]
    batched = lidar_points(*(torch.stack(parts) for parts in zip(*ticks)), kind, FLOOR)  # (T, N, P, D)
    for t, parts in enumerate(ticks):
        alone = lidar_points(*parts, kind, FLOOR)
        torch.testing.assert_close(batched.points[t], alone.points)
        assert torch.equal(batched.mask[t], alone.mask)
    states = (x.float() for x in (pos, vel, others_pos, others_vel))
    small = lidar_points(*states, kind, FLOOR, LidarConfig(agents=1, beams=8))
    assert small.points.dtype == torch.float32 and small.points.shape == (3, 9, POINT_DIM)


def test_lidar_of_a_floor_step_agrees_with_the_observation() -> None:
    floor = WarehouseFloor(30, seed=3)
    obs, info = floor.reset()
    obs, *_, info = floor.step(np.random.default_rng(0).uniform(-1, 1, (30, 2)))
    seen = lidar_from_step(obs, info, floor.layout)
    slots = torch.from_numpy(obs[:, NEIGHBOUR_DIMS]).reshape(30, NEIGHBOURS, SLOT_SIZE)
    # The observation's neighbour slots are the first agent points, in the same order.
    filled = slots[..., SLOT_KIND] > 0  # (N, M)
    assert torch.equal(seen.mask[:, :NEIGHBOURS], filled)
    torch.testing.assert_close(seen.points[:, :NEIGHBOURS, POINT_POS][filled], slots[..., SLOT_POS][filled])


def _ticks(robots: int, episodes: int, steps: int) -> tuple[torch.Tensor, ...]:
    """Rows (B = episodes * steps * robots) of own state (B, 4), points (B, P, D), mask (B, P) and
    clearance (B,) from random play on one floor, each episode from fresh random starts."""
    floor, rng = WarehouseFloor(robots, seed=0), np.random.default_rng(0)
    pos, vel, hpos, hvel = [], [], [], []
    for episode in range(episodes):
        obs, info = floor.reset(seed=episode)
        for _ in range(steps):
            obs, *_, info = floor.step(rng.uniform(-1, 1, (robots, 2)))
            parts = (obs[:, POS_DIMS], obs[:, VEL_DIMS], info["humans_pos"], info["humans_vel"])
            for out, x in zip((pos, vel, hpos, hvel), parts):
                out.append(torch.from_numpy(np.array(x, dtype=np.float32)))
    pos, vel, hpos, hvel = (torch.stack(x) for x in (pos, vel, hpos, hvel))  # (T, N or H, 2)
    kind = np.repeat([KIND_ROBOT, KIND_HUMAN], [robots, hpos.shape[1]])
    others_pos, others_vel = torch.cat([pos, hpos], 1), torch.cat([vel, hvel], 1)
    seen = lidar_points(pos, vel, others_pos, others_vel, kind, floor.layout)  # one call over every tick
    gap = clearance(pos, others_pos, kind, floor.layout)  # (T, N)
    return torch.cat([pos, vel], -1).flatten(0, 1), seen.points.flatten(0, 1), seen.mask.flatten(0, 1), gap.flatten()


def _fit(net: PointSetNet, own: torch.Tensor, points: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
         steps: int) -> None:
    torch.manual_seed(0)
    net.fit_normalizer(own)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        rows = torch.randint(len(own), (256,))
        loss = (net(own[rows], points[rows], mask[rows]).squeeze(-1) - target[rows]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_point_set_net_learns_clearance_that_own_state_alone_cannot() -> None:
    torch.set_num_threads(1)
    own, points, mask, gap = _ticks(robots=30, episodes=6, steps=40)
    split = len(own) * 5 // 6  # the last episode is held out
    torch.manual_seed(0)
    seeing, blind = PointSetNet(4, POINT_DIM, hidden=32), PointSetNet(4, POINT_DIM, hidden=32)
    _fit(seeing, own[:split], points[:split], mask[:split], gap[:split], STEPS)
    _fit(blind, own[:split], points[:split], torch.zeros_like(mask[:split]), gap[:split], STEPS)
    own, points, mask, gap = own[split:], points[split:], mask[split:], gap[split:]
    with torch.no_grad():
        seeing_err = (seeing(own, points, mask).squeeze(-1) - gap).abs().mean()
        blind_err = (blind(own, points, torch.zeros_like(mask)).squeeze(-1) - gap).abs().mean()
    print(f"held-out clearance MAE: points {seeing_err:.3f} m, own state only {blind_err:.3f} m "
          f"(clearance std {gap.std():.3f} m)")
    assert seeing_err < SEEING_MAE and blind_err > BLIND_MAE


STEPS, SEEING_MAE, BLIND_MAE = 400, 0.1, 0.2
