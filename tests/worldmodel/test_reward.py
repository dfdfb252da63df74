"""The reward model's planning form against its module form, and the models' parameter names."""

from __future__ import annotations

import torch

from worldmodel.dynamics import ProbabilisticEnsemble
from worldmodel.recurrent import RecurrentDynamics
from worldmodel.reward import RewardModel, TerminationModel


def test_folded_reward_equals_the_module_and_follows_weight_updates() -> None:
    torch.manual_seed(0)
    model = RewardModel(3, 2, hidden=16, layers=2, members=2)
    obs, act, nxt = 2 * torch.randn(40, 3) + 1, torch.rand(40, 2), torch.randn(40, 3) - 1
    model.fit_normalizers(obs, act, nxt, 5 * torch.randn(40) + 3)
    with torch.no_grad():
        torch.testing.assert_close(model.folded()(obs, act, nxt), model(obs, act, nxt))
        model.net.net[0].weight.add_(0.1)  # an in-place update, as an optimiser step makes
        torch.testing.assert_close(model.folded()(obs, act, nxt), model(obs, act, nxt))


def test_every_model_takes_the_log_schemas_new_obs_by_name() -> None:
    # The log column is new_obs; the models' parameters carry the same name, so callers may pass it by keyword.
    torch.manual_seed(0)
    obs, act, new_obs = torch.randn(8, 3), torch.rand(8, 2), torch.randn(8, 3)
    dynamics = ProbabilisticEnsemble(3, 2, members=2, hidden=8, layers=1)
    dynamics.fit_normalizers(obs, act, new_obs=new_obs)
    assert dynamics.loss(obs, act, new_obs=new_obs).shape == (2,)
    assert dynamics.val_loss(obs, act, new_obs=new_obs).shape == (2,)
    recurrent = RecurrentDynamics(3, 2, hidden=8, members=1)
    recurrent.fit_normalizers(obs, act, new_obs=new_obs)
    assert recurrent.loss(obs[None, None], act[None, None], new_obs=new_obs[None, None]).shape == (1,)
    reward = RewardModel(3, 2, hidden=8, layers=1, members=2)
    reward.fit_normalizers(obs, act, new_obs=new_obs, reward=torch.randn(8))
    assert reward(obs, act, new_obs=new_obs).shape == reward.folded()(obs, act, new_obs=new_obs).shape == (2, 8)
    termination = TerminationModel(3, 2, hidden=8, layers=1, members=2)
    termination.fit_normalizers(obs, act, new_obs=new_obs, terminated=torch.zeros(8))
    members = lambda x: x.expand(2, *x.shape)  # noqa: E731  (E, B, *), as the trainer passes rows
    loss = termination.loss(members(obs), members(act), new_obs=members(new_obs), terminated=torch.zeros(2, 8))
    assert loss.shape == (2,)
