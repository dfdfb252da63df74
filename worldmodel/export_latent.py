"""Export of a latent (camera) world model: the perception encoder, the latent dynamics ensemble and the
latent heads, each its own graph, written and checked as ``worldmodel.export`` writes a vector model's.

The encoder is the article's perception service on the edge: frames in, latent out; the dynamics and heads
plan in that latent. Every graph is compared with the torch model on random inputs (random frames for the
encoder; the encoder's latents of random frames for the others, so they see latents the encoder can make).

Shapes: ``B`` batch, ``F`` stacked frames, ``H, W, C`` frame, ``Z`` latent, ``A`` action, ``E`` members.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
from torch import nn

from worldmodel.export import ExportConfig, write_graphs
from worldmodel.export_graphs import Graph
from worldmodel.export_manifest import FORMAT
from worldmodel.latent import LatentWorldModel
from worldmodel.latent_artifact import LatentArtifact


class _Encoder(nn.Module):
    def __init__(self, model: LatentWorldModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, stacks: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model.encode(stacks),)


class _Next(nn.Module):
    def __init__(self, model: LatentWorldModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model.next(z, action),)


class _Heads(nn.Module):
    def __init__(self, model: LatentWorldModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.reward(z), self.model.breach_logit(z)


class _Correct(nn.Module):
    def __init__(self, model: LatentWorldModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, prior: torch.Tensor, encoded: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model.correct(prior, encoded),)


def latent_graphs(model: LatentWorldModel) -> list[Graph]:
    """encoder: stacks (B, F, H, W, C) uint8 -> z (B, Z); dynamics: z (B, Z), action (B, A) -> next_z (E, B, Z);
    heads: z (B, Z) -> reward (B,), breach_logit (B,); a recurrent model's filter too: prior (B, Z) (the members'
    mean next_z), encoded (B, Z) -> z (B, Z)."""
    cfg = model.cfg
    f, (h, w, c), a, e = cfg.frames, cfg.image_shape, cfg.act_dim, cfg.members

    def stacks(b: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        return (torch.randint(0, 256, (b, f, h, w, c), generator=gen, dtype=torch.uint8),)

    def latents(b: int, gen: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            return model.encode(stacks(b, gen)[0])

    def latent_actions(b: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        return latents(b, gen), torch.rand(b, a, generator=gen) * 2 - 1  # actions in [-1, 1]^A

    def priors_encodings(b: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return model.next(*latent_actions(b, gen)).mean(0), latents(b, gen)

    z = latents(1, torch.Generator().manual_seed(0)).shape[-1]
    encoder, step, heads = _Encoder(model).eval(), _Next(model).eval(), _Heads(model).eval()
    correct = _Correct(model).eval()
    filtered = [Graph("filter", correct, ("prior", "encoded"), ("z",),
                      {"prior": ["B", z], "encoded": ["B", z], "z": ["B", z]}, priors_encodings, correct.forward)]
    return (filtered if cfg.recurrent else []) + [
        Graph("encoder", encoder, ("stacks",), ("z",), {"stacks": ["B", f, h, w, c], "z": ["B", z]}, stacks,
              encoder.forward),
        Graph("dynamics", step, ("z", "action"), ("next_z",),
              {"z": ["B", z], "action": ["B", a], "next_z": [e, "B", z]}, latent_actions, step.forward),
        Graph("heads", heads, ("z",), ("reward", "breach_logit"),
              {"z": ["B", z], "reward": ["B"], "breach_logit": ["B"]}, lambda b, gen: (latents(b, gen),),
              heads.forward),
    ]


def export_latent(artifact: LatentArtifact, out: str | os.PathLike[str], cfg: ExportConfig = ExportConfig(),
                  source: str | None = None, overwrite: bool = True) -> dict[str, Any]:
    """Write the latent model's graphs to the directory ``out``, checked; returns the manifest."""
    artifact.model.to("cpu").eval()

    def manifest_of(entries: dict[str, Any]) -> dict[str, Any]:
        return {"format": FORMAT, "export_format": cfg.format, "model_version": artifact.version, "source": source,
                "data_fingerprint": artifact.data_fingerprint, "kind": "latent", **artifact.spaces(),
                "members": artifact.cfg.members, "encoder": {"file": entries["encoder"]["file"]},
                "tolerance": cfg.tolerance, "check_rows": cfg.check_rows, "seed": cfg.seed,
                "opset": cfg.opset if cfg.format == "onnx" else None, "torch": torch.__version__,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "graphs": entries}

    return write_graphs(latent_graphs(artifact.model), out, cfg, manifest_of, overwrite)
