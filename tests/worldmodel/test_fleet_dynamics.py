"""The multi-agent world model: a toy whose answer needs the neighbour's action, then its structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldmodel.artifact import load_model, save_model
from worldmodel.config import ModelConfig, TrainConfig, default_dynamics
from worldmodel.dynamics import ProbabilisticEnsemble
from worldmodel.envs import make_env, space_spec
from worldmodel.envs.fleet_collect import collect_fleet
from worldmodel.envs.warehouse import PHYS_DIMS, WAREHOUSE_ID
from worldmodel.fit import fit
from worldmodel.fleet_data import ObsLayout, neighbour_actions
from worldmodel.fleet_dynamics import FleetEnsemble
from worldmodel.training import train_world_model

# A disc with one neighbour slot: [x, y, vx, vy, task (2), slot (dx, dy, dvx, dvy, kind), shelf (2)].
TOY = ObsLayout(phys=slice(0, 4), pos=slice(0, 2), task=slice(4, 6), neighbours=slice(6, 11), shelf=slice(11, 13),
                slots=1)
TOUCH = 0.6
"""Centre distance below which the two discs touch."""


def two_discs(rows: int, seed: int) -> list[torch.Tensor]:
    """Rows of a disc and its neighbour: (obs (B, 13), action (B, 2), neighbour_actions (B, 1, 2), new_obs (B, 13)).

    The disc accelerates by its own action; touching a neighbour, it is pushed away from it and
    takes on the neighbour's action too (a robot's action, zero for a human). So who is in the
    slot, where, and what it did all matter, and an own-only model cannot know the last.
    """
    g = np.random.default_rng(seed)
    pos, vel, act = g.uniform(-2, 2, (rows, 2)), g.normal(0, 0.5, (rows, 2)), g.uniform(-1, 1, (rows, 2))
    kind = g.choice([0, 1, 2], rows, p=[0.2, 0.6, 0.2])
    rel = np.where(kind[:, None] > 0, g.normal(0, 0.5, (rows, 2)), 0.0)
    rel_vel = np.where(kind[:, None] > 0, g.normal(0, 0.5, (rows, 2)), 0.0)
    other = np.where(kind[:, None] == 1, g.uniform(-1, 1, (rows, 2)), 0.0)
    dist = np.linalg.norm(rel, axis=1, keepdims=True)
    touch = (dist < TOUCH) & (kind[:, None] > 0)
    new_vel = vel + 0.2 * act + np.where(touch, -0.3 * rel / np.maximum(dist, 1e-3) + other, 0.0)
    obs = np.concatenate([pos, vel, g.normal(size=(rows, 2)), rel, rel_vel, kind[:, None], g.normal(size=(rows, 2))], 1)
    new_obs = obs.copy()
    new_obs[:, 0:2], new_obs[:, 2:4] = pos + 0.1 * new_vel, new_vel
    return [torch.tensor(x, dtype=torch.float32) for x in (obs, act, other[:, None], new_obs)]


def _velocity_nmse(mean: torch.Tensor, obs: torch.Tensor, new_obs: torch.Tensor) -> float:
    """Mean over the velocity dims of MSE / Var(true change): 1 is 'predicts the mean change'."""
    true = new_obs[:, 2:4] - obs[:, 2:4]
    return ((mean[:, 2:4] - new_obs[:, 2:4]).square().mean(0) / true.var(0)).mean().item()


def test_the_fleet_model_learns_what_the_neighbours_action_does_and_an_own_only_model_cannot() -> None:
    torch.manual_seed(0)
    train, val = two_discs(2000, 0), two_discs(1000, 1)
    cfg = TrainConfig(epochs=20, patience=20, lr=3e-3)
    fleet = FleetEnsemble(TOY, 2, members=1, hidden=32)
    fleet.fit_normalizers(*train)
    fit(fleet, train, val, cfg)
    own = ProbabilisticEnsemble(13, 2, members=1, hidden=64, layers=2)
    drop = lambda part: [part[0], part[1], part[3]]  # noqa: E731  the own-only model never sees the slot's action
    own.fit_normalizers(*drop(train))
    fit(own, drop(train), drop(val), cfg)
    obs, action, neighbours, new_obs = two_discs(2000, 2)
    with torch.no_grad():
        fleet_err = _velocity_nmse(fleet(obs, action, neighbours).mean.mean(0), obs, new_obs)
        own_err = _velocity_nmse(own(obs, action).mean.mean(0), obs, new_obs)
    assert own_err > 0.5  # the neighbour's action, most of the change in a touch, is beyond it
    assert fleet_err < 0.25 * own_err, (fleet_err, own_err)


@pytest.fixture(scope="module")
def model() -> FleetEnsemble:
    torch.manual_seed(0)
    layout = ObsLayout(phys=slice(0, 4), pos=slice(0, 2), task=slice(4, 6), neighbours=slice(6, 21),
                       shelf=slice(21, 23), slots=3)
    net = FleetEnsemble(layout, 2, members=3, hidden=16)
    return net.eval()


def _rows(rows: int, slots: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(rows, 8 + 5 * slots, generator=g)
    kinds = torch.randint(0, 3, (rows, slots), generator=g).float()
    obs[:, 6:6 + 5 * slots].view(rows, slots, 5)[..., 4] = kinds
    return obs, torch.rand(rows, 2, generator=g) * 2 - 1, torch.rand(rows, slots, 2, generator=g) * 2 - 1


def test_shapes_and_per_member_batches(model: FleetEnsemble) -> None:
    obs, action, neighbours = _rows(7, 3, 0)
    pred = model(obs, action, neighbours)
    assert pred.mean.shape == pred.var.shape == (3, 7, 4) and (pred.var > 0).all()
    each = model(obs.expand(3, 7, -1), action.expand(3, 7, -1), neighbours.expand(3, 7, 3, 2))
    torch.testing.assert_close(each.mean, pred.mean)
    assert model.loss(*(x.expand(3, *x.shape) for x in (obs, action, neighbours, obs))).shape == (3,)
    assert 0 < model.flops_per_sample() < 50_000


def test_slot_order_does_not_matter_and_empty_slots_are_ignored(model: FleetEnsemble) -> None:
    obs, action, neighbours = _rows(9, 3, 1)
    ref = model(obs, action, neighbours).mean
    slots = obs[:, 6:21].view(9, 3, 5)
    order = torch.tensor([2, 0, 1])
    permuted = obs.clone()
    permuted[:, 6:21] = slots[:, order].reshape(9, 15)
    torch.testing.assert_close(model(permuted, action, neighbours[:, order]).mean, ref)
    junk_slots = slots.clone()
    empty = junk_slots[..., 4] == 0  # (B, M)
    junk_slots[..., :4][empty] = 7.0  # garbage in empty slots must never reach the output
    junk = obs.clone()
    junk[:, 6:21] = junk_slots.reshape(9, 15)
    noisy = neighbours.clone()
    noisy[empty] = 3.0
    torch.testing.assert_close(model(junk, action, noisy).mean, ref)


def test_a_row_with_no_neighbour_predicts_finite_states(model: FleetEnsemble) -> None:
    obs, action, neighbours = _rows(4, 3, 2)
    obs[:, 6:21] = 0.0
    pred = model(obs, action, torch.zeros_like(neighbours))
    assert torch.isfinite(pred.mean).all() and torch.isfinite(pred.var).all()


def test_the_config_checks_the_fleet_width() -> None:
    with pytest.raises(ValueError, match="multiple of its 4 heads"):
        ModelConfig(dynamics="fleet", hidden=30)


def test_warehouse_logs_train_the_fleet_kind_through_the_trainer_and_its_artifact(tmp_path) -> None:
    assert default_dynamics(WAREHOUSE_ID) == "fleet" and default_dynamics("Nav2D-v0") == "ensemble"
    data = collect_fleet(8, 3, seed=0, steps=40)
    spec = space_spec(make_env(WAREHOUSE_ID), WAREHOUSE_ID)
    cfg = ModelConfig(dynamics="fleet", ensemble_size=2, hidden=16, layers=1, reward_hidden=16, reward_layers=1)
    model = train_world_model(data, spec, cfg, TrainConfig(epochs=2, patience=2))
    dyn = model.metrics["dynamics"]
    assert dyn["dims"] == list(range(PHYS_DIMS.start, PHYS_DIMS.stop)) and len(dyn["r2"]) == 4
    assert dyn["rows"] == 40 * 8  # one whole floor episode of three held out for test
    back = load_model(save_model(model, tmp_path / "model"))
    rows = [torch.as_tensor(x[:6]) for x in (data.obs, data.actions, neighbour_actions(data))]
    torch.testing.assert_close(back.dynamics(*rows).mean, model.dynamics(*rows).mean)
    torch.testing.assert_close(back.dynamics.var_scale, model.dynamics.var_scale)
