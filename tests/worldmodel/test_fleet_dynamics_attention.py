"""The fleet model's attention as computed (the "no neighbour" token apart, narrow layers transposed) is
the attention written plainly: every slot and the "no neighbour" token in one softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worldmodel.config import FLEET_HEADS as HEADS
from worldmodel.fleet_data import warehouse_layout
from worldmodel.fleet_dynamics import FleetEnsemble
from worldmodel.nn import expand_members


def plain_head_input(model: FleetEnsemble, obs: torch.Tensor, action: torch.Tensor,
                     neighbour_actions: torch.Tensor) -> torch.Tensor:
    """The head's output (E, B, 2P), the tokens and the "no neighbour" token joined in one (E, B, M+1, H) tensor."""
    e, m, h = model.members, model.layout.slots, model.hidden
    obs, action = expand_members(obs, e), expand_members(action, e)
    b = obs.shape[1]
    own = torch.relu(model.own(model.own_norm(model._own(obs, action))))
    cont, kind = model._slots(obs, neighbour_actions.expand(e, *neighbour_actions.shape))
    token = torch.cat([model.token_norm(cont), F.one_hot(kind, model.layout.kinds).to(cont)], -1)
    token = model.token(token.flatten(1, 2)).unflatten(1, (b, m))
    token = torch.cat([token, model.no_neighbour.unsqueeze(1).expand(e, b, 1, h)], 2)  # (E, B, M+1, H)
    pair = torch.relu(token + model.pair(own).unsqueeze(2))
    score = model.score(pair.flatten(1, 2)).unflatten(1, (b, m + 1))
    empty = torch.cat([kind == 0, torch.zeros_like(kind[..., :1], dtype=torch.bool)], -1)
    weight = score.masked_fill(empty.unsqueeze(-1), float("-inf")).softmax(2)
    read = (weight.unsqueeze(-1) * pair.unflatten(-1, (HEADS, h // HEADS))).sum(2).flatten(-2)
    x = torch.cat([own, read], -1)
    for layer in model.head[:-1]:
        x = torch.relu(layer(x))
    return model.head[-1](x)


def test_the_computed_attention_is_the_plain_one() -> None:
    torch.manual_seed(0)
    model = FleetEnsemble(warehouse_layout(), 2, members=3, hidden=16).eval()
    b, lay = 64, warehouse_layout()
    obs = torch.randn(b, lay.obs_dim)
    slots = obs[:, lay.neighbours].view(b, lay.slots, 5)
    slots[..., 4] = torch.randint(0, lay.kinds, (b, lay.slots)).float()  # empty, robot and human slots
    slots[:4] = 0  # and rows with nobody near
    action, neighbour_actions = torch.randn(b, 2), torch.randn(b, lay.slots, 2)
    with torch.no_grad():
        torch.testing.assert_close(model._raw(obs, action, neighbour_actions),
                                   plain_head_input(model, obs, action, neighbour_actions), rtol=1e-5, atol=1e-5)
