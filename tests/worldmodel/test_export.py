"""`worldmodel.export`: ONNX and TorchScript round trips equal to the torch modules, the manifest, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from planners.policy import PolicyNet
from tests.thread_fixtures import one_thread  # noqa: F401  (autouse: one torch thread)
from worldmodel.config import ModelConfig, TrainConfig
from worldmodel.envs import SpaceSpec
from worldmodel.export import ExportConfig, export_model
from worldmodel.export_graphs import Graph
from worldmodel.export_manifest import FORMAT, MANIFEST, ExportError, read_export, sha256_file
from worldmodel.model import WorldModel, build_dynamics, build_reward, build_termination
from worldmodel.nn import Normalizer

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # TorchScript is what is asked for

SPEC = SpaceSpec(6, 2, (-1.0, -1.0), (1.0, 1.0), "Nav2D-v0")


def random_model(dynamics: str = "ensemble", members: int = 3) -> WorldModel:
    """A random-init model whose normalisers and calibration are not the identity (so they are exported too)."""
    torch.manual_seed(0)
    cfg = ModelConfig(dynamics=dynamics, ensemble_size=members, hidden=16, layers=2, reward_hidden=16,
                      reward_layers=2)
    modules = build_dynamics(SPEC, cfg), build_reward(SPEC, cfg), build_termination(SPEC, cfg)
    with torch.no_grad():
        for norm in (m for module in modules for m in module.modules() if isinstance(m, Normalizer)):
            norm.mean.normal_(0, 2)
            norm.std.uniform_(0.2, 3)
        if hasattr(modules[0], "var_scale"):
            modules[0].var_scale.uniform_(0.5, 2)
    return WorldModel(SPEC, cfg, TrainConfig(), *modules, version="1.2.3")


def random_policy() -> PolicyNet:
    torch.manual_seed(1)
    policy = PolicyNet(6, 2, [-1, -1], [1, 1], zones=True)
    torch.nn.init.normal_(policy.head.weight, std=0.5)
    policy.set_normalisation(torch.randn(policy.feature_dim), torch.rand(policy.feature_dim) + 0.5)
    return policy.eval()


def _load(path: Path, fmt: str):
    """The exported file as a function of numpy inputs returning numpy outputs."""
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda *xs: session.run(None, dict(zip(names, xs)))
    module = torch.jit.load(str(path))
    return lambda *xs: [o.numpy() for o in module(*map(torch.from_numpy, xs))]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_round_trip_equals_the_torch_modules(tmp_path: Path, fmt: str) -> None:
    model, policy = random_model(), random_policy()
    manifest = export_model(model, tmp_path / fmt, ExportConfig(format=fmt), policy=policy, source="test")
    assert set(manifest["graphs"]) == {"dynamics", "reward", "termination", "policy"}
    gen = torch.Generator().manual_seed(7)
    b, e = 5, model.dynamics.members
    obs, act, new = (torch.randn(*lead, d, generator=gen) * 3 for lead, d in (((e, b), 6), ((e, b), 2), ((b,), 6)))
    dynamics = _load(tmp_path / fmt / manifest["graphs"]["dynamics"]["file"], fmt)
    mean, std = dynamics(obs.numpy(), act.numpy())
    with torch.no_grad():
        pred = model.dynamics(obs, act)
        want = {"mean": pred.mean, "std": (pred.var * pred.scale).sqrt(), "reward": model.reward(obs[0], act[0], new),
                "termination": model.termination(obs[0], act[0], new),
                "policy": policy(policy.features(new, None))}
    np.testing.assert_allclose(mean, want["mean"].numpy(), atol=1e-5)
    np.testing.assert_allclose(std, want["std"].numpy(), atol=1e-5)
    for name, args in (("reward", (obs[0], act[0], new)), ("termination", (obs[0], act[0], new)),
                       ("policy", (policy.features(new, None),))):
        (got,) = _load(tmp_path / fmt / manifest["graphs"][name]["file"], fmt)(*(x.numpy() for x in args))
        np.testing.assert_allclose(got, want[name].numpy(), atol=1e-5, err_msg=name)


def test_manifest_says_what_was_exported_and_how_close(tmp_path: Path) -> None:
    out = tmp_path / "export"
    export_model(random_model(), out, source="a model dir")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == FORMAT and manifest["export_format"] == "onnx"
    assert (manifest["model_version"], manifest["source"], manifest["members"]) == ("1.2.3", "a model dir", 3)
    assert manifest["tolerance"] == 1e-5 and manifest["encoder"]["file"] is None and manifest["encoder"]["why"]
    dynamics = manifest["graphs"]["dynamics"]
    assert dynamics["inputs"] == ["obs", "action"] and dynamics["outputs"] == ["mean", "std"]
    assert dynamics["shapes"]["obs"] == [3, "B", 6] and dynamics["shapes"]["std"] == [3, "B", 6]
    for graph in manifest["graphs"].values():
        assert graph["sha256"] == sha256_file(out / graph["file"])
        assert 0 <= graph["max_abs_diff"] <= 1e-5
    assert "policy" not in manifest["graphs"]
    assert sorted(p.name for p in out.iterdir()) == ["dynamics.onnx", "export.json", "reward.onnx", "termination.onnx"]
    assert read_export(out, "onnx") == manifest


def test_deterministic_model_exports_zero_std(tmp_path: Path) -> None:
    manifest = export_model(random_model("mlp", members=2), tmp_path / "x", ExportConfig(format="torchscript"))
    assert manifest["probabilistic"] is False and manifest["members"] == 2
    x = np.random.default_rng(0).normal(size=(2, 4, 8)).astype(np.float32)
    _, std = _load(tmp_path / "x" / "dynamics.pt", "torchscript")(x[..., :6].copy(), x[..., 6:].copy())
    assert np.all(std == 0)


def test_a_difference_beyond_the_tolerance_fails_and_writes_nothing(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = Graph.reference
    monkeypatch.setattr(Graph, "reference", lambda self, inputs: tuple(o + 1e-3 for o in real(self, inputs)))
    with pytest.raises(ExportError, match=r"exported dynamics: output '(mean|std)' differs from torch's by 0.001.*"
                                          r"tolerance 1e-05"):
        export_model(random_model(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither the export nor its staging directory


def test_a_changed_file_is_refused(tmp_path: Path) -> None:
    export_model(random_model(), tmp_path / "x")
    with (tmp_path / "x" / "reward.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ExportError, match="reward.onnx: checksum mismatch"):
        read_export(tmp_path / "x")
    with pytest.raises(ExportError, match="expected 'torchscript'"):
        read_export(tmp_path / "x", "torchscript")


def test_refuses_what_it_cannot_export(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="'gru'"):
        export_model(random_model("gru", members=1), tmp_path / "x")
    dropout = ModelConfig(ensemble_size=3, hidden=16, uncertainty="mc_dropout")
    masked = WorldModel(SPEC, dropout, TrainConfig(), build_dynamics(SPEC, dropout), build_reward(SPEC, dropout),
                        None, version="1.2.4")
    with pytest.raises(ExportError, match="uncertainty 'mc_dropout'"):
        export_model(masked, tmp_path / "y")
    with pytest.raises(ValueError, match="format must be one of onnx, torchscript"):
        ExportConfig(format="tflite")
    with pytest.raises(ExportError, match="no such export directory"):
        read_export(tmp_path / "missing")
