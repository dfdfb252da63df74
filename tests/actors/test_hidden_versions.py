"""An agent's hidden state is used only by the version that left it: after a switch, for a shadow or an A/B arm,
another version's state of the same size starts the agent fresh instead of being read as its own."""

from __future__ import annotations

import numpy as np
import torch

from actors.ensemble import EnsembleWorker
from planners.config import PlanConfig
from planners.latent_service import LatentPlanner
from planners.served import ServiceConfig
from worldmodel.latent import LatentConfig, LatentWorldModel
from worldmodel.latent_artifact import LatentArtifact

CFG = LatentConfig(image_shape=(32, 32, 3), frames=2, latent=8, simnorm_group=4, members=3, hidden=16, depth=4,
                   recurrent=True)


def test_another_versions_hidden_state_starts_the_agent_fresh() -> None:
    torch.manual_seed(0)
    model = LatentWorldModel(CFG).eval()
    with torch.no_grad():
        model.gain_logit.fill_(-30.0)  # a gain of 0: a used hidden state is the latent, whatever the frames
    worker = EnsembleWorker.__new__(EnsembleWorker)  # the planner it hosts, without loading one from disk
    worker.service = LatentPlanner(LatentArtifact(model, version="0.3.0", env_id="PixelNav2D-v0"),
                                   ServiceConfig(latent=PlanConfig(horizon=4, samples=8)))
    frames = np.random.default_rng(0).integers(0, 256, (3, 2, 32, 32, 3), dtype=np.uint8)
    hidden = worker.plan(frames).hidden
    later = np.random.default_rng(1).integers(0, 256, (3, 2, 32, 32, 3), dtype=np.uint8)
    out = worker.plan(later, hidden=hidden, hidden_versions=["0.3.0", "0.2.0", None])
    with torch.no_grad():
        fresh = worker.service.encode(later).numpy()
    m = CFG.moving  # a trajectory holds the moving part
    assert np.allclose(out.trajectory[[0, 2], 0], hidden[[0, 2], :m], atol=1e-5)  # its own version's, or unknown
    assert np.allclose(out.trajectory[1, 0], fresh[1, :m], atol=1e-5)  # another version's: the frames alone
