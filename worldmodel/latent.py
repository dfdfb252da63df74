"""A latent world model from pixels, TD-MPC2-style: no reconstruction, the latent is what predicts.

A CNN encodes a short stack of camera frames into a latent ``z`` (SimNorm by default: groups of
softmaxes, so it can neither grow nor shrink over a long rollout). An ensemble of latent dynamics heads
predicts ``z'`` from ``(z, a)``, every member in one batched matmul (``EnsembleMLP``); a reward head and
a geofence-breach head read a latent, both as learned distances (``DistanceHead``). Training (``latent_training``) makes the members' multi-step
predictions match the encoder's own stop-gradient encodings of the frames that followed, and the heads
match the logged reward and breach flag: nothing is trained on the true state.

Frame stacks: a single frame shows where the agent is, not how fast it moves, so the encoder reads the
last ``frames`` frames (the first one repeated at an episode's start, when the agent is at rest).

The members' spread in ``z'`` is the model's uncertainty (``disagreement``), in units of the typical
one-step latent change fitted from data (``step_std``), as the vector ensembles report theirs.

Dimensions: ``B`` batch, ``E`` members, ``F`` stacked frames, ``H, W, C`` frame shape, ``Z`` latent,
``A`` action.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.dynamics import Prediction
from worldmodel.nn import EnsembleMLP, Normalizer, expand_members, member_inputs, variance


NORMS = ("simnorm", "layernorm")
"""Latent normalisations ``LatentConfig.norm`` accepts."""


@dataclass(frozen=True)
class LatentConfig:
    """Shapes and sizes of a ``LatentWorldModel``; saved with it."""

    image_shape: tuple[int, int, int] = (64, 64, 3)
    """(H, W, C) of one camera frame."""
    act_dim: int = 2
    """A, action size."""
    frames: int = 3
    """F, frames stacked as the encoder's input (velocity is their difference)."""
    latent: int = 64
    """Z, latent size: a multiple of ``simnorm_group``."""
    norm: str = "simnorm"
    """How every latent is normalised: "simnorm" (TD-MPC2's) or "layernorm" (no affine)."""
    simnorm_group: int = 8
    """Latent entries per SimNorm softmax group."""
    members: int = 5
    """E, latent dynamics heads in the ensemble."""
    hidden: int = 128
    """Width of the dynamics and head MLPs."""
    layers: int = 2
    """Hidden layers of the dynamics MLP."""
    depth: int = 16
    """Channels of the encoder's first convolutions (later ones double it)."""
    zones: int = 4
    """Slots of the breach head: regions of the latent space whose union is predicted as a breach."""

    def __post_init__(self) -> None:
        if len(self.image_shape) != 3 or min(self.image_shape[:2]) < 32:
            raise ValueError(f"image_shape must be (H, W, C) with H, W >= 32, got {self.image_shape!r}")
        for name in ("act_dim", "frames", "latent", "simnorm_group", "members", "hidden", "layers", "depth", "zones"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.latent % self.simnorm_group:
            raise ValueError(f"latent ({self.latent}) must be a multiple of simnorm_group ({self.simnorm_group})")


def simnorm(x: torch.Tensor, group: int) -> torch.Tensor:
    """TD-MPC2's simplicial normalisation: a softmax over each ``group`` consecutive entries. (..., Z) -> (..., Z)."""
    shape = x.shape
    return F.softmax(x.reshape(*shape[:-1], -1, group), dim=-1).reshape(shape)


def normalise(x: torch.Tensor, cfg: LatentConfig) -> torch.Tensor:
    """A latent as ``cfg.norm`` says: (..., Z) -> (..., Z)."""
    return simnorm(x, cfg.simnorm_group) if cfg.norm == "simnorm" else F.layer_norm(x, x.shape[-1:])


class SpatialSoftmax(nn.Module):
    """Each channel's softmax-weighted mean pixel position in [-1, 1]^2: (B, K, h, w) -> (B, 2K).

    Positions of small discs are what this world is about; this reads them to a fraction of a pixel
    where a flatten-and-project head would have to learn it from many examples. The softmax temperature
    is learned per channel, starting sharp: a disc of 8 pixels must outweigh thousands of floor pixels.
    """

    def __init__(self, channels: int, init_scale: float = 10.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((channels, 1), float(torch.log(torch.tensor(init_scale)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k, h, w = x.shape
        weights = F.softmax(x.reshape(b, k, h * w) * self.log_scale.exp(), dim=-1).view(b, k, h, w)
        ys = torch.linspace(1, -1, h, device=x.device, dtype=x.dtype)  # y up, as the arena's
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
        return torch.cat([(weights.sum(2) * xs).sum(-1), (weights.sum(3) * ys).sum(-1)], -1)  # (B, 2K)


class PixelEncoder(nn.Module):
    """Frame stacks -> latents: (B, F, H, W, C) uint8 -> (B, Z), normalised (``LatentConfig.norm``).

    Two branches: features of 2x2 pixel blocks (colours, at half resolution) read as keypoints by a
    spatial softmax (where the agent is in each frame, where the goal is), and strided convolutions
    flattened into a coarse map (what is where: both zones). An MLP joins them. A block's mean colour
    still says how much of a disc covers it, and per-pixel features at full resolution took 12 times
    the CPU (50 ms against 4 ms for 64 stacks, one thread).
    """

    def __init__(self, cfg: LatentConfig) -> None:
        super().__init__()
        h, w, c = cfg.image_shape
        d, self.cfg = cfg.depth, cfg
        self.pixels = nn.Sequential(nn.Conv2d(cfg.frames * c, d, 2, stride=2), nn.SiLU(), nn.Conv2d(d, d, 1))
        self.keypoints = SpatialSoftmax(d)
        self.coarse = nn.Sequential(nn.Conv2d(cfg.frames * c, d, 4, stride=2), nn.SiLU(),
                                    nn.Conv2d(d, 2 * d, 4, stride=2), nn.SiLU(),
                                    nn.Conv2d(2 * d, 2 * d, 3, stride=2), nn.SiLU(), nn.Flatten())
        with torch.no_grad():
            flat = self.coarse(torch.zeros(1, cfg.frames * c, h, w)).shape[1]
        # Batch statistics, not LayerNorm: early on every image's features are nearly the same vector, and
        # LayerNorm (or SimNorm) keeps them so; latents that hardly differ leave the heads nothing to learn
        # from (no reward was learnt in 1,450 steps). Standardising each feature over the images makes
        # them differ from the start; in eval mode (planning) the tracked statistics of real images apply.
        self.proj = nn.Sequential(nn.Linear(flat + 2 * d, cfg.hidden), nn.BatchNorm1d(cfg.hidden), nn.SiLU(),
                                  nn.Linear(cfg.hidden, cfg.latent))

    def forward(self, stacks: torch.Tensor) -> torch.Tensor:
        b = stacks.shape[0]
        if stacks.shape[1:] != (self.cfg.frames, *self.cfg.image_shape):
            shape = ", ".join(map(str, (self.cfg.frames, *self.cfg.image_shape)))
            raise ValueError(f"expected frame stacks (B, {shape}), got {tuple(stacks.shape)}")
        x = stacks.permute(0, 1, 4, 2, 3).reshape(b, -1, *self.cfg.image_shape[:2])  # (B, F*C, H, W)
        x = x.float() / 255.0 - 0.5
        points = self.keypoints(self.pixels(x))  # (B, 2d)
        z = self.proj(torch.cat([points, self.coarse(x)], -1))
        return normalise(z, self.cfg)  # (B, Z)


class DistanceHead(nn.Module):
    """``bias`` minus the least norm of ``slots`` learned linear maps of a latent: (..., Z) -> (...).

    Both things the heads predict are distances: the reward is minus the distance to the goal, and a
    breach is being within a zone's radius of its centre (of one of several zones). A norm of a linear
    map of the latent says "a distance" directly; a plain MLP must first learn the kink of |x| from
    data in which the best linear fit of it is flat, and on this data did not in 600 steps.
    """

    def __init__(self, cfg: LatentConfig, slots: int = 1, dims: int = 8, bias: float = 0.0) -> None:
        super().__init__()
        self.slots, self.dims = slots, dims
        self.maps = nn.Linear(cfg.latent, slots * dims)
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = self.maps(z).unflatten(-1, (self.slots, self.dims))  # (..., slots, dims)
        return self.bias - (u.square().sum(-1) + 1e-6).sqrt().amin(-1)


class LatentWorldModel(nn.Module):
    """Encoder, E latent dynamics heads, reward head and geofence-breach head (see the module docstring).

    The heads are shared by the members: disagreement is about where the world goes, not what it is worth.
    """

    def __init__(self, cfg: LatentConfig = LatentConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = PixelEncoder(cfg)
        self.dynamics = EnsembleMLP(cfg.members, cfg.latent + cfg.act_dim, cfg.latent, cfg.hidden, cfg.layers,
                                    activation="relu")
        self.reward_head = DistanceHead(cfg)
        self.breach_head = DistanceHead(cfg, slots=cfg.zones, bias=1.0)
        self.reward_norm = Normalizer(1)
        """Standardises logged rewards: the reward head predicts in these units."""
        self.register_buffer("step_std", torch.ones(cfg.latent))
        """(Z,) typical one-step change of the latent, the unit of ``disagreement``."""

    @property
    def members(self) -> int:
        return self.cfg.members

    def encode(self, stacks: torch.Tensor) -> torch.Tensor:
        """Latents of frame stacks: (B, F, H, W, C) uint8 -> (B, Z)."""
        return self.encoder(stacks)

    def next(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Every member's next latent: z (B, Z) shared or (E, B, Z) per member, action (B, A) or (E, B, A)
        -> (E, B, Z)."""
        out = self.dynamics(member_inputs(self.members, z, action))  # (E, B, Z)
        return normalise(out, self.cfg)

    def reward(self, z: torch.Tensor) -> torch.Tensor:
        """Predicted reward of arriving at latent z, in the env's units: (..., Z) -> (...)."""
        return self.reward_norm.inverse(self.reward_head(z)[..., None])[..., 0]

    def breach_logit(self, z: torch.Tensor) -> torch.Tensor:
        """Logit of the geofence-breach flag at latent z: (..., Z) -> (...)."""
        return self.breach_head(z)

    def disagreement(self, next_z: torch.Tensor) -> torch.Tensor:
        """Members' variance of predicted latents in units of ``step_std``, mean over Z: (E, ..., Z) -> (...)."""
        return (variance(next_z, 0) / self.step_std.square()).mean(-1)


class LatentDynamics(nn.Module):
    """A ``LatentWorldModel`` seen by the planners as an ensemble dynamics over states z (N, Z).

    ``planners.rollout`` steps it with ``forward`` (a deterministic ``Prediction``: zero variance), measures
    disagreement in ``delta_norm.std`` units, and checks ``obs_dim``. Objectives read the model's heads
    (``planners.latent_eval``).
    """

    probabilistic = False

    def __init__(self, model: LatentWorldModel) -> None:
        super().__init__()
        self.model = model
        self.members, self.obs_dim = model.members, model.cfg.latent
        self.delta_norm = _StdView(model)

    def forward(self, z: torch.Tensor, action: torch.Tensor) -> Prediction:
        """z (B, Z) or (E, B, Z), action (B, A) or (E, B, A) -> Prediction with mean (E, B, Z) and zero var."""
        mean = self.model.next(expand_members(z, self.members), action)
        return Prediction(mean, torch.zeros_like(mean))


class _StdView:
    """``delta_norm`` as the rollout reads it: ``.std`` is the model's current ``step_std``."""

    def __init__(self, model: LatentWorldModel) -> None:
        self._model = model

    @property
    def std(self) -> torch.Tensor:
        return self._model.step_std
