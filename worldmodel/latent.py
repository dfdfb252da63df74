"""A latent world model from pixels, TD-MPC2-style: no reconstruction, the latent is what predicts.

The latent ``z`` has three parts, side by side (``LatentConfig`` gives their slices):
- keypoints: for each of the ``frames`` stacked frames, the (x, y) image positions of ``keypoints``
  learned feature channels (``worldmodel.keypoints.SpatialSoftmax``: found by a softmax, measured by a
  windowed centroid), unnormalised: positions of small discs (agent, goal) to a fraction of a pixel, which any
  normalisation or mixing MLP would blur. Differences between frames are velocities, linear in the latent;
- a SimNorm (or LayerNorm) part from a coarse view of all frames: whatever else the scene holds;
- a ``zone_grid`` x ``zone_grid`` map of learned "breach-ness" of the last frame (where the no-fly
  zones are), from features of its own, static: the dynamics carries it unchanged.
An ensemble of latent dynamics heads predicts the next keypoints as a change of the current ones and
the next normalised part, every member in one batched matmul (``EnsembleMLP``). The reward head is a
learned distance between keypoint projections (reward is minus the distance to the goal); the breach
head reads the zone map at the keypoints (where the agent is). Training
(``latent_training``) makes the members' multi-step predictions match the encoder's own stop-gradient
encodings of the frames that followed, and the heads match the logged reward and breach flag: nothing
is trained on the true state.

Frame stacks: a single frame shows where the agent is, not how fast it moves, so the encoder reads the
last ``frames`` frames (the first one repeated at an episode's start, when the agent is at rest). Under
camera noise their differences are noisy; a ``recurrent`` model filters the latent through
time (``filter``), as a Kalman filter does: the latent of step t is the dynamics' prediction from step t-1,
corrected towards the encoding of the new frames by a learned gain, so velocity is integrated from the
actions and the frames rather than read from two noisy positions.

The members' spread in ``z'`` is the model's uncertainty (``disagreement``), in units of the typical
one-step latent change fitted from data (``step_std``), as the vector ensembles report theirs.

Dimensions: ``B`` batch, ``E`` members, ``F`` stacked frames, ``H, W, C`` frame shape, ``K`` keypoints
per frame, ``G`` zone grid side, ``Z`` latent (all parts), ``A`` action.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from worldmodel.dynamics import Prediction
from worldmodel.keypoints import SpatialSoftmax
from worldmodel.nn import EnsembleMLP, Normalizer, expand_members, member_inputs, variance


NORMS = ("simnorm", "layernorm")
"""Normalisations ``LatentConfig.norm`` accepts."""
KEYPOINT_SCALE = 10.0
"""Keypoints are image positions in [-1, 1] times this: one-step moves of about 0.1, as the normalised part's."""


@dataclass(frozen=True)
class LatentConfig:
    """Shapes and sizes of a ``LatentWorldModel``; saved with it."""

    image_shape: tuple[int, int, int] = (64, 64, 3)
    """(H, W, C) of one camera frame."""
    act_dim: int = 2
    """A, action size."""
    frames: int = 3
    """F, frames stacked as the encoder's input (velocity is their difference)."""
    keypoints: int = 8
    """K, keypoint channels per frame: 2*F*K latent entries."""
    latent: int = 32
    """Size of the normalised part: a multiple of ``simnorm_group``."""
    norm: str = "simnorm"
    """How the normalised part is normalised: "simnorm" (TD-MPC2's) or "layernorm" (no affine)."""
    simnorm_group: int = 8
    """Entries per SimNorm softmax group."""
    zone_grid: int = 16
    """G, side of the zone map (G*G latent entries); H/2 and W/2 must be multiples of it."""
    members: int = 5
    """E, latent dynamics heads in the ensemble."""
    hidden: int = 128
    """Width of the dynamics and projection MLPs."""
    layers: int = 2
    """Hidden layers of the dynamics MLP."""
    depth: int = 16
    """Channels of the encoder's first convolutions (later ones double it)."""
    zone_context: int = 1
    """Side of the zone map's convolutions over the 2x2 pixel blocks' features: 1 reads each block's colour
    alone (a colour classifier, so a colour is a zone or not wherever it appears); 3 lets each block see its
    neighbours (models saved before this field: it reads the agent's surroundings, and took a goal ringing the
    agent for a zone ringing it)."""
    recurrent: bool = False
    """Filter the latent through time (``LatentWorldModel.filter``): each step's latent is the members' mean
    prediction from the last one, corrected towards the new frames' encoding by a learned gain per entry. It
    then carries what a few noisy frames cannot show: velocity (at 0.5 arena units per second a step moves the
    agent a sixth of a pixel, under a pixel of camera-noise jitter) and whatever an occlusion hides."""

    def __post_init__(self) -> None:
        if len(self.image_shape) != 3 or min(self.image_shape[:2]) < 32:
            raise ValueError(f"image_shape must be (H, W, C) with H, W >= 32, got {self.image_shape!r}")
        for name in ("act_dim", "frames", "keypoints", "latent", "simnorm_group", "zone_grid", "members", "hidden",
                     "layers", "depth"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.zone_context < 1 or self.zone_context % 2 == 0:
            raise ValueError(f"zone_context must be an odd side >= 1, got {self.zone_context!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.latent % self.simnorm_group:
            raise ValueError(f"latent ({self.latent}) must be a multiple of simnorm_group ({self.simnorm_group})")
        if self.recurrent and self.frames != 2:
            raise ValueError(f"a recurrent model stacks 2 frames (a position and its last change), got frames="
                             f"{self.frames}")
        if any((side // 2) % self.zone_grid for side in self.image_shape[:2]):
            raise ValueError(f"zone_grid ({self.zone_grid}) must divide half the image size {self.image_shape[:2]}")

    @property
    def points(self) -> int:
        """Keypoint entries of the latent, 2*F*K: frame by frame, each frame's K x's then K y's."""
        return 2 * self.frames * self.keypoints

    @property
    def moving(self) -> int:
        """Entries the dynamics predicts (keypoints, then the normalised part); the zone map follows them."""
        return self.points + self.latent

    @property
    def state_dim(self) -> int:
        """Z, the whole latent."""
        return self.moving + self.zone_grid ** 2


def simnorm(x: torch.Tensor, group: int) -> torch.Tensor:
    """TD-MPC2's simplicial normalisation: a softmax over each ``group`` consecutive entries. (..., D) -> (..., D)."""
    groups = x.unflatten(-1, (-1, group))
    # written out: torch's softmax over a last dim of a few entries is 4x slower on CPU (a planner runs this at
    # every step of every rollout)
    e = (groups - groups.amax(-1, keepdim=True)).exp()
    return (e / e.sum(-1, keepdim=True)).flatten(-2)


def normalise(x: torch.Tensor, cfg: LatentConfig) -> torch.Tensor:
    """The normalised part as ``cfg.norm`` says: (..., latent) -> (..., latent)."""
    return simnorm(x, cfg.simnorm_group) if cfg.norm == "simnorm" else F.layer_norm(x, x.shape[-1:])


class PixelEncoder(nn.Module):
    """Frame stacks -> latents: (B, F, H, W, C) uint8 -> (B, Z) in the three parts of the module docstring.

    Every frame goes through the same features of 2x2 pixel blocks (colours at half resolution: a block's
    mean colour still says how much of a disc covers it, at a twelfth of full resolution's CPU); their
    keypoints are each frame's. The zone map comes from the last frame through convolutions of its own. Strided
    convolutions over the whole stack, flattened, and the keypoints feed the normalised part.
    """

    def __init__(self, cfg: LatentConfig) -> None:
        super().__init__()
        h, w, c = cfg.image_shape
        d, self.cfg = cfg.depth, cfg
        self.pixels = nn.Sequential(nn.Conv2d(c, d, 2, stride=2), nn.SiLU(), nn.Conv2d(d, d, 1), nn.SiLU())
        self.heat = nn.Conv2d(d, cfg.keypoints, 1)
        self.keypoints = SpatialSoftmax(cfg.keypoints)
        # The zone map has features of its own (the breach loss does not bend the keypoints' to its purpose): by
        # default a classifier of each 2x2 block's colour, pooled into the grid. Where the agent stands its disc
        # hides the zone under it; the breach head's reading spans the disc, so the ring of zone around it says
        # the agent is inside. A map whose cells see their neighbours (zone_context 3) learns "a disc ringed by
        # colour" instead, and reads a zone where the agent stands on its goal, which random play seldom shows it.
        k = cfg.zone_context
        self.zone = nn.Sequential(nn.Conv2d(c, d, 2, stride=2), nn.SiLU(), nn.Conv2d(d, d, k, padding=k // 2),
                                  nn.SiLU(), nn.Conv2d(d, 1, k, padding=k // 2))
        self.coarse = nn.Sequential(nn.Conv2d(cfg.frames * c, d, 4, stride=2), nn.SiLU(),
                                    nn.Conv2d(d, 2 * d, 4, stride=2), nn.SiLU(),
                                    nn.Conv2d(2 * d, 2 * d, 3, stride=2), nn.SiLU(), nn.Flatten())
        with torch.no_grad():
            flat = self.coarse(torch.zeros(1, cfg.frames * c, h, w)).shape[1]
        # Batch statistics, not LayerNorm: early on every image's features are nearly the same vector, and
        # LayerNorm (or SimNorm) keeps them so. In eval mode (planning) the tracked statistics apply.
        self.proj = nn.Sequential(nn.Linear(flat + cfg.points, cfg.hidden), nn.BatchNorm1d(cfg.hidden), nn.SiLU(),
                                  nn.Linear(cfg.hidden, cfg.latent))

    def forward(self, stacks: torch.Tensor) -> torch.Tensor:
        cfg, b = self.cfg, stacks.shape[0]
        if stacks.shape[1:] != (cfg.frames, *cfg.image_shape):
            shape = ", ".join(map(str, (cfg.frames, *cfg.image_shape)))
            raise ValueError(f"expected frame stacks (B, {shape}), got {tuple(stacks.shape)}")
        x = stacks.permute(0, 1, 4, 2, 3).float() / 255.0 - 0.5  # (B, F, C, H, W)
        feats = self.pixels(x.flatten(0, 1))  # (B*F, d, H/2, W/2)
        points = self.keypoints(self.heat(feats)).view(b, cfg.points) * KEYPOINT_SCALE  # (B, 2FK)
        zone = torch.sigmoid(self.zone(x[:, -1]))  # (B, 1, H/2, W/2)
        zones = F.avg_pool2d(zone, zone.shape[-1] // cfg.zone_grid).flatten(1)  # (B, G*G), rows top to bottom
        rest = normalise(self.proj(torch.cat([points, self.coarse(x.flatten(1, 2))], -1)), cfg)  # (B, latent)
        return torch.cat([points, rest, zones], -1)  # (B, Z)


class DistanceHead(nn.Module):
    """``bias`` minus the norm of a learned linear map of the keypoints: (..., Z) -> (...).

    The reward is minus the distance to the goal: with the agent's and the goal's keypoints in the latent,
    a linear map gives their difference, and its norm the distance, exactly; a plain MLP would first have
    to learn the kink of |x| from data in which the best linear fit of it is flat.
    """

    def __init__(self, cfg: LatentConfig, dims: int = 4, bias: float = 0.0) -> None:
        super().__init__()
        self.points = cfg.points
        self.maps = nn.Linear(cfg.points, dims)
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = self.maps(z[..., :self.points])  # (..., dims)
        return self.bias - (u.square().sum(-1) + 1e-6).sqrt()


class ZoneHead(nn.Module):
    """Logit of a geofence breach: the zone map read where the agent is, (..., Z) -> (...).

    A breach is the agent being inside a zone: the map says where zones are (from the last frame, carried
    unchanged through the dynamics), and one of the last frame's K keypoints is the agent. The map is read
    at every one of them, by Gaussian interpolation between cell centres (separable: one G-vector per axis,
    of a learned width), and a logistic regression on the K readings picks the agent's (and discounts
    keypoints that sit on zones whatever happens). Reading at each keypoint, rather than at one learned
    mix of them, lets map and choice learn together from the start.
    """

    def __init__(self, cfg: LatentConfig, base_rate: float = 0.04) -> None:
        super().__init__()
        self.cfg, g, k = cfg, cfg.zone_grid, cfg.keypoints
        # Weights and bias in tenths of the logit: Adam moves a parameter by about its learning rate per
        # step, and logits of +-10 must be reachable in hundreds of steps, not thousands.
        self.weight = nn.Parameter(torch.full((k,), 0.1))
        self.bias = nn.Parameter(torch.tensor(float(torch.logit(torch.tensor(base_rate)))) / 10)
        centres = -1 + (torch.arange(g, dtype=torch.float32) + 0.5) * 2 / g
        self.register_buffer("xs", centres * KEYPOINT_SCALE)  # (G,) column centres, left to right
        self.register_buffer("ys", centres.flip(0) * KEYPOINT_SCALE)  # (G,) row centres, top to bottom
        self.log_width = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(KEYPOINT_SCALE / g)))))

    def forward(self, z: torch.Tensor, zone_map: torch.Tensor | None = None) -> torch.Tensor:
        """The map ``z`` carries, (..., Z) -> (...); or with ``zone_map`` (N, G*G) each agent's map, read at
        latents of N agents' rollouts, (..., N, R, >= points) -> (..., N, R) (planning: the moving part is enough).

        Planning's reading is one (... R K, G) x (G, G) product per agent rather than one (K, G) x (G, G) product
        per rollout row: the map is the agent's, whichever rollout reads it."""
        cfg, g, k = self.cfg, self.cfg.zone_grid, self.cfg.keypoints
        last = z[..., cfg.points - 2 * k:cfg.points]  # (..., 2K) the last frame's x's, then its y's
        spread = 2 * self.log_width.exp().square()
        kx = F.softmax((last[..., :k, None] - self.xs).square_().div_(-spread), -1)  # (..., K, G)
        ky = F.softmax((last[..., k:, None] - self.ys).square_().div_(-spread), -1)  # (..., K, G)
        if zone_map is None:
            inside = ((ky @ z[..., cfg.moving:].unflatten(-1, (g, g))) * kx).sum(-1)  # (..., K) the map at each
        else:
            if z.dim() < 3 or zone_map.shape != (z.shape[-3], g * g):
                raise ValueError(f"zone_map must be (N, {g * g}) for latents (..., N, R, Z'), got "
                                 f"{tuple(zone_map.shape)} and {tuple(z.shape)}")
            rows = ky.movedim(-4, 0)  # (N, ..., R, K, G)
            read = torch.bmm(rows.reshape(len(zone_map), -1, g), zone_map.view(-1, g, g)).view(rows.shape)
            inside = (read.movedim(0, -4) * kx).sum(-1)  # (..., N, R, K)
        return 10 * (inside @ self.weight + self.bias)


class LatentWorldModel(nn.Module):
    """Encoder, E latent dynamics heads, reward head and geofence-breach head (see the module docstring).

    The heads are shared by the members: disagreement is about where the world goes, not what it is worth.
    """

    def __init__(self, cfg: LatentConfig = LatentConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = PixelEncoder(cfg)
        self.dynamics = EnsembleMLP(cfg.members, cfg.moving + cfg.act_dim, cfg.moving, cfg.hidden, cfg.layers,
                                    activation="relu")
        self.reward_head = DistanceHead(cfg)
        self.breach_head = ZoneHead(cfg)
        self.reward_norm = Normalizer(1)
        """Standardises logged rewards: the reward head predicts in these units."""
        self.register_buffer("step_std", torch.ones(cfg.state_dim))
        """(Z,) typical one-step change of the latent, the unit of ``disagreement``."""
        if cfg.recurrent:
            logit = torch.zeros(cfg.state_dim)
            logit[:2 * cfg.keypoints] = -2.0  # velocity gains start near 0.1: velocity is mostly the actions' sum
            self.gain_logit = nn.Parameter(logit)
            """(Z,) logit of the filter's gain per latent entry (``correct``)."""

    @property
    def members(self) -> int:
        return self.cfg.members

    def encode(self, stacks: torch.Tensor) -> torch.Tensor:
        """Latents of frame stacks: (B, F, H, W, C) uint8 -> (B, Z)."""
        return self.encoder(stacks)

    def filter(self, z: torch.Tensor, action: torch.Tensor, stacks: torch.Tensor) -> torch.Tensor:
        """A recurrent model's next latent: the members' mean prediction from ``z`` under ``action``, moved
        towards the encoding of the new frame stacks by the gain (``correct``).

        z (B, Z) the last filtered latent (an episode starts from ``encode``), action (B, A) taken since, stacks
        (B, F, H, W, C) uint8 the frames now -> (B, Z)."""
        if not self.cfg.recurrent:
            raise ValueError("filter is for recurrent latent models (LatentConfig.recurrent); this one encodes "
                             "each frame stack alone")
        return self.correct(self.next(z, action).mean(0), self.encode(stacks))

    def observe(self, z: torch.Tensor, action: torch.Tensor, stacks: torch.Tensor) -> torch.Tensor:
        """The latent after new frames: ``filter``ed from the last one for a recurrent model, else the new frame
        stacks' encoding alone. Arguments as ``filter``'s -> (B, Z)."""
        return self.filter(z, action, stacks) if self.cfg.recurrent else self.encode(stacks)

    def correct(self, prior: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        """The filter's update: prior and encoded (..., Z) -> (..., Z).

        Keypoints, an alpha-beta filter per keypoint coordinate: the innovation is the new frame's keypoint
        less its prediction (the older frame's keypoint was measured at the step before: counting it again
        would count its noise twice); the position moves by alpha times it, the change since the older frame
        (the velocity) by beta times it (``gain_logit``'s entries at the new and at the older frame's slots).
        The rest: each entry between prediction and encoding by its gain, the normalised part normalised again
        (a SimNorm group rescaled to sum to 1)."""
        cfg, k2 = self.cfg, 2 * self.cfg.keypoints
        gain = torch.sigmoid(self.gain_logit)
        older, new = prior[..., :k2], prior[..., k2:2 * k2]
        innovation = encoded[..., k2:2 * k2] - new
        new = new + gain[k2:2 * k2] * innovation
        change = prior[..., k2:2 * k2] - older + gain[:k2] * innovation
        z = prior + gain * (encoded - prior)
        part = z[..., cfg.points:cfg.moving]
        if cfg.norm == "simnorm":
            groups = part.unflatten(-1, (-1, cfg.simnorm_group))
            part = (groups / groups.sum(-1, keepdim=True).clamp_min(1e-8)).flatten(-2)
        else:
            part = F.layer_norm(part, part.shape[-1:])
        return torch.cat([new - change, new, part, z[..., cfg.moving:]], -1)

    def next(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Every member's next latent: z (B, Z) shared or (E, B, Z) per member, action (B, A) or (E, B, A)
        -> (E, B, Z)."""
        z = expand_members(z, self.members)  # (E, B, Z)
        return torch.cat([self.next_moving(z[..., :self.cfg.moving], action), z[..., self.cfg.moving:]], -1)

    def next_moving(self, moving: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``next`` of the entries the dynamics predicts (keypoints, then the normalised part): moving (B, M) or
        (E, B, M), action (B, A) or (E, B, A) -> (E, B, M). What planning rolls out: the zone map stays put."""
        cfg = self.cfg
        out = self.dynamics(member_inputs(self.members, moving, action))  # (E, B, M)
        points = moving[..., :cfg.points] + out[..., :cfg.points]  # keypoints move by what the members predict
        return torch.cat([points, normalise(out[..., cfg.points:], cfg)], -1)

    def reward(self, z: torch.Tensor) -> torch.Tensor:
        """Predicted reward of arriving at latent z, in the env's units: (..., Z) -> (...)."""
        return self.reward_norm.inverse(self.reward_head(z)[..., None])[..., 0]

    def breach_logit(self, z: torch.Tensor, zone_map: torch.Tensor | None = None) -> torch.Tensor:
        """Logit of the geofence-breach flag at latent z: (..., Z) -> (...); or, planning, at latents of N agents'
        rollouts (..., N, R, M) with each agent's zone map (N, G*G) apart (``ZoneHead``)."""
        return self.breach_head(z, zone_map)

    def disagreement(self, next_z: torch.Tensor) -> torch.Tensor:
        """Members' variance of predicted latents in units of ``step_std``, mean over the entries the dynamics
        predicts (the zone map is carried, never predicted): (E, ..., Z) -> (...)."""
        m = self.cfg.moving
        return (variance(next_z[..., :m], 0) / self.step_std[:m].square()).mean(-1)


class LatentDynamics(nn.Module):
    """A ``LatentWorldModel`` seen by the planners as an ensemble dynamics over the entries it predicts, states
    (N, M) (``LatentConfig.moving``): the zone map never moves, so a rollout does not carry it; the breach term
    reads each agent's map from the planner's params (``planners.latent_eval``).

    ``planners.rollout`` steps it with ``forward`` (a deterministic ``Prediction``: zero variance), measures
    disagreement in ``delta_norm.std`` units (as ``LatentWorldModel.disagreement``), and checks ``obs_dim``.
    """

    probabilistic = False

    def __init__(self, model: LatentWorldModel) -> None:
        super().__init__()
        self.model = model
        self.members, self.obs_dim = model.members, model.cfg.moving
        self.delta_norm = _StdView(model)

    def forward(self, z: torch.Tensor, action: torch.Tensor) -> Prediction:
        """z (B, M) or (E, B, M), action (B, A) or (E, B, A) -> Prediction with mean (E, B, M) and zero var."""
        mean = self.model.next_moving(expand_members(z, self.members), action)
        return Prediction(mean, torch.zeros_like(mean))


class _StdView:
    """``delta_norm`` as the rollout reads it: ``.std`` is the model's current ``step_std`` of the moving entries."""

    def __init__(self, model: LatentWorldModel) -> None:
        self._model = model

    @property
    def std(self) -> torch.Tensor:
        return self._model.step_std[:self._model.cfg.moving]
