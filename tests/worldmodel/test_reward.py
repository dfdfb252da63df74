"""The reward model's planning form against its module form."""

from __future__ import annotations

import torch

from worldmodel.reward import RewardModel


def test_folded_reward_equals_the_module_and_follows_weight_updates() -> None:
    torch.manual_seed(0)
    model = RewardModel(3, 2, hidden=16, layers=2, members=2)
    obs, act, nxt = 2 * torch.randn(40, 3) + 1, torch.rand(40, 2), torch.randn(40, 3) - 1
    model.fit_normalizers(obs, act, nxt, 5 * torch.randn(40) + 3)
    with torch.no_grad():
        torch.testing.assert_close(model.folded()(obs, act, nxt), model(obs, act, nxt))
        model.net.net[0].weight.add_(0.1)  # an in-place update, as an optimiser step makes
        torch.testing.assert_close(model.folded()(obs, act, nxt), model(obs, act, nxt))
