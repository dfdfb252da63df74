"""The latent (camera) model's export: its perception encoder, latent dynamics and heads, each checked
against torch, and the encoder's file run by onnxruntime on frames as the edge would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from tests.thread_fixtures import one_thread  # noqa: F401  (autouse: one torch thread)
from tests.worldmodel.test_latent_artifact import TINY, tiny_artifact
from worldmodel.export import ExportConfig
from worldmodel.export_latent import export_latent
from worldmodel.export_manifest import read_export
from worldmodel.latent import KEYPOINT_SCALE

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # TorchScript is what is asked for


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_encoder_dynamics_and_heads_are_exported_and_checked(tmp_path: Path, fmt: str) -> None:
    manifest = export_latent(tiny_artifact(), tmp_path / fmt, ExportConfig(format=fmt), source="here")
    assert set(manifest["graphs"]) == {"encoder", "dynamics", "heads"}
    assert manifest["kind"] == "latent" and manifest["encoder"]["file"] == manifest["graphs"]["encoder"]["file"]
    assert manifest["image_shape"] == list(TINY.image_shape) and manifest["frames"] == TINY.frames
    assert all(g["max_abs_diff"] <= 1e-5 * KEYPOINT_SCALE for g in manifest["graphs"].values())  # per unit of scale
    assert set(read_export(tmp_path / fmt, fmt)["graphs"]) == set(manifest["graphs"])


def test_the_exported_encoder_reads_uint8_frames_like_the_model(tmp_path: Path) -> None:
    art = tiny_artifact()
    export_latent(art, tmp_path / "x", ExportConfig())
    frames = np.random.default_rng(0).integers(0, 256, (7, TINY.frames, *TINY.image_shape), dtype=np.uint8)
    session = onnxruntime.InferenceSession(str(tmp_path / "x" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    z, = session.run(["z"], {"stacks": frames})
    with torch.no_grad():
        expected = art.model.encode(torch.as_tensor(frames)).numpy()
    assert z.shape == expected.shape == (7, expected.shape[1])
    assert np.abs(z - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())  # per unit of the output's scale


def test_a_recurrent_models_filter_is_exported_and_runs_on_the_edge(tmp_path: Path) -> None:
    import dataclasses

    from worldmodel.latent import LatentWorldModel
    from worldmodel.latent_artifact import LatentArtifact

    torch.manual_seed(0)
    model = LatentWorldModel(dataclasses.replace(TINY, frames=2, recurrent=True)).eval()
    with torch.no_grad():
        model.gain_logit.uniform_(-3, 3)
    manifest = export_latent(LatentArtifact(model, version="0.1.0", env_id="PixelNav2D-v0"), tmp_path / "x",
                             ExportConfig())
    assert set(manifest["graphs"]) == {"filter", "encoder", "dynamics", "heads"}
    assert all(g["max_abs_diff"] <= 1e-5 * KEYPOINT_SCALE for g in manifest["graphs"].values())
    frames = np.random.default_rng(1).integers(0, 256, (2, 3, 2, *TINY.image_shape), dtype=np.uint8)  # 2 steps
    with torch.no_grad():  # one filter step as the edge runs it: encode, predict, correct
        z = model.encode(torch.as_tensor(frames[0]))
        action = torch.tensor([[0.5, -0.5]] * 3)
        prior, encoded = model.next(z, action).mean(0), model.encode(torch.as_tensor(frames[1]))
        expected = model.filter(z, action, torch.as_tensor(frames[1])).numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "x" / "filter.onnx"), providers=["CPUExecutionProvider"])
    out, = session.run(["z"], {"prior": prior.numpy(), "encoded": encoded.numpy()})
    assert np.abs(out - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
