"""API v1 of the fleet endpoint: request and response bodies, validated at the door.

Everything a client can get wrong is caught here or in the ingress with a 4xx whose one-line
``error`` names the field: malformed JSON, unknown fields, a non-finite or absurdly large number,
a string where a boolean belongs, an unknown objective, zones that are not (x, y, r).
The observation's and the action's lengths depend on the served model: ``serving.served_checks`` checks
them, and states them in the OpenAPI schema the app publishes.

The ``Field`` descriptions are the API's documentation (OpenAPI, ``/docs``).
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from worldmodel.data.writer import AGENT_ID_PATTERN

if TYPE_CHECKING:
    from actors.records import PlanAnswer

MAX_ABS_OBS = 1e6
"""Largest magnitude of any number accepted: beyond it a value is a unit or encoding bug, not a state."""
MAX_OBS_DIM = 4096
MAX_IMAGE_BYTES = 1 << 20
"""Largest camera frame accepted (raw bytes): beyond it the frame is not a served model's."""
MAX_ACT_DIM = 256
MAX_ZONES = 8
MAX_BATCH = 1024
MAX_STEP = 2**53 - 1
"""Largest step index ``t``: the largest integer a JSON number carries exactly."""
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
"""An idempotency key: letters, digits and . _ : - (a uuid, hex or not), so an error naming it stays one line."""

Finite = Annotated[float, Field(ge=-MAX_ABS_OBS, le=MAX_ABS_OBS, allow_inf_nan=False)]
"""A finite number of magnitude <= ``MAX_ABS_OBS``."""
AGENT_ID_DESCRIPTION = "The agent's id: a letter or digit, then up to 127 letters, digits, . _ -"
AgentId = Annotated[str, Field(pattern=AGENT_ID_PATTERN.pattern, description=AGENT_ID_DESCRIPTION)]
"""Checked as a whole string (pydantic's pattern), in the plan body and the reset path alike."""
NonNegative = Annotated[float, Field(ge=0, le=MAX_ABS_OBS, allow_inf_nan=False)]
Zone = tuple[Finite, Finite, NonNegative]
Point = tuple[Finite, Finite]
ActionVector = Annotated[list[Finite], Field(min_length=1, max_length=MAX_ACT_DIM)]
MAX_PROPOSALS = 16
"""Actions a caller may ask ``/v1/explain`` to compare, at most."""
Proposal = ActionVector | Annotated[list[ActionVector], Field(min_length=1, max_length=1024)]
"""An action to compare: (A,) held for the whole horizon, or an (H, A) sequence."""
PLAN_ID_PATTERN = r"^[0-9a-f]{32}$"
"""A served decision's ``plan_id``: 32 lowercase hex digits."""
SITE_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
"""A site (warehouse floor) name: letters, digits and . _ : -."""
REWARD_MODEL_PATTERN = r"^r(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$"
"""A registered reward model's version: 'r' and a semantic version (``worldmodel.reward_artifact``)."""
"""A served decision's ``plan_id``: 32 lowercase hex digits."""


class Objective(BaseModel):
    """What the agent wants: the learned reward or Nav2D's goal reward, plus no-fly zones."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["learned", "goal"] = Field(
        default="learned", description="'learned': the model's reward; 'goal': distance to the goal in the "
                                       "observation (Nav2D). The served model lists what it serves (GET /v1/models).")
    no_fly_zones: list[Zone] = Field(
        default_factory=list, max_length=MAX_ZONES,
        description="Discs [x, y, r] the agent's position must stay out of (models with positions only).")
    bounds: tuple[Point, Point] | None = Field(
        default=None, description="[[xlo, ylo], [xhi, yhi]]: the box the agent's position must stay in (models with "
                                  "positions only).")
    max_speed: NonNegative | None = Field(
        default=None, description="The agent's largest allowed speed (models with positions only).")
    action_bounds: tuple[ActionVector, ActionVector] | None = Field(
        default=None, description="[low, high]: this agent's action bounds, each the model's action size and inside "
                                  "its action box; plans, the fallback and the shield keep to them.")

    @field_validator("bounds")
    @classmethod
    def _box_ordered(cls, box: tuple[tuple[float, float], tuple[float, float]] | None) -> Any:
        if box is not None and (box[0][0] > box[1][0] or box[0][1] > box[1][1]):
            raise ValueError(f"the low corner {list(box[0])} must be <= the high corner {list(box[1])}")
        return box

    @field_validator("action_bounds")
    @classmethod
    def _actions_ordered(cls, bounds: tuple[list[float], list[float]] | None) -> Any:
        if bounds is None:
            return bounds
        low, high = bounds
        if len(low) != len(high):
            raise ValueError(f"low has {len(low)} values and high {len(high)}; both must be the action size")
        if any(lo > hi for lo, hi in zip(low, high)):
            raise ValueError(f"low {low} must be <= high {high} in every dimension")
        return bounds


class ExplainOptions(BaseModel):
    """What a plan request's ``explain`` asks besides the decision: actions to compare with it."""

    model_config = ConfigDict(extra="forbid")
    proposals: list[Proposal] = Field(
        default_factory=list, max_length=MAX_PROPOSALS,
        description="Actions to compare with the decision: each an action (held for the horizon) or an "
                    "(H, A) sequence of the served horizon; all of one form.")

    @field_validator("proposals")
    @classmethod
    def _one_form(cls, proposals: list[Any]) -> list[Any]:
        return one_form(proposals)


def one_form(proposals: list[Any]) -> list[Any]:
    """``proposals`` when all are actions or all are sequences (they are stacked into one array)."""
    if len({isinstance(p[0], list) for p in proposals}) > 1:
        raise ValueError("give all as actions [a...] or all as sequences [[a...], ...], not both")
    return proposals


class PlanRequest(BaseModel):
    """One agent asking for its next action, reporting what happened since its previous request."""

    model_config = ConfigDict(extra="forbid")
    agent_id: AgentId
    observation: list[Finite] = Field(
        default_factory=list, max_length=MAX_OBS_DIM,
        description="The agent's current observation; its length is the served model's observation size. A camera "
                    "agent sends `image` instead.")
    image: bytes | None = Field(
        default=None, description="A camera agent's current frame: base64 of its raw (H, W, C) uint8 bytes, row by "
                                  "row (H*W*C bytes: the served model's image_shape, GET /v1/models). The server "
                                  "keeps the agent's last frames, so it sends one frame per request.")
    reward: Finite | None = Field(
        default=None, description="Reward of the agent's previous action; without it no transition is logged.")
    terminated: StrictBool = Field(
        default=False, description="This observation ends the episode (a terminal state).")
    truncated: StrictBool = Field(
        default=False, description="The episode was cut (e.g. a time limit) at this observation.")
    t: int | None = Field(
        default=None, ge=0, le=MAX_STEP,
        description="Step index of this observation in the agent's episode (0 at its first). A step the server "
                    "never saw breaks the episode: no transition is logged across the gap.")
    prev_action: list[Finite] | None = Field(
        default=None, min_length=1, max_length=MAX_ACT_DIM,
        description="The action the agent actually executed after its previous observation: required for the "
                    "transition to be logged (the server never logs a guessed action). Its length is the "
                    "model's action size.")
    objective: Objective | None = Field(default=None, description="What to plan for (default: the learned reward).")
    deadline_ms: float | None = Field(
        default=None, gt=0, le=60_000, allow_inf_nan=False,
        description="Answer within this many ms of the request's arrival (the server's default when absent).")
    request_id: str | None = Field(
        default=None, pattern=REQUEST_ID_PATTERN,
        description="Idempotency key: a retry with the agent's last id is answered again (replayed); an older "
                    "id of the agent is refused with 409.")
    return_trajectory: StrictBool = Field(
        default=False, description="Include the plan's predicted trajectory in the answer.")
    mode: Literal["plan", "policy"] = Field(
        default="plan", description="'plan': planned through the model (the fallback and the shield act when "
                                    "needed); 'policy': the served policy's action, shielded, without planning "
                                    "(well under a millisecond; 422 when the served model has no policy).")
    site: str | None = Field(
        default=None, pattern=SITE_PATTERN,
        description="Warehouse-v1: the floor the robot is on. The robots of one site that arrive together (one "
                    "batch, or requests of one tick) are planned jointly; absent: the default site. Lone-agent "
                    "models take none.")
    reward_model: str | None = Field(
        default=None, pattern=REWARD_MODEL_PATTERN,
        description="The registered reward model (e.g. 'r1.2.0', `wm reward list`) the learned objective plans "
                    "with in place of the world model's own reward; absent: the fleet's (`wm serve "
                    "--reward-model`), else the world model's own. 422 when it is not registered or does not fit "
                    "the served model's spaces (GET /v1/models lists those that do).")
    explain: StrictBool | ExplainOptions = Field(
        default=False, description="Also explain this decision: the answer carries `explanation`, what "
                                   "POST /v1/explain answers for its plan_id (the fleet bus's way to ask). An "
                                   "object {\"proposals\": [...]} adds actions to compare.")

    @field_validator("image", mode="before")
    @classmethod
    def _image_bytes(cls, image: Any) -> Any:
        """JSON carries base64 text; the fleet bus carries the raw bytes (``serving.bus``), taken as they are."""
        if isinstance(image, str):
            if len(image) > 4 * math.ceil(MAX_IMAGE_BYTES / 3):
                raise ValueError(f"a frame of over {MAX_IMAGE_BYTES} bytes; no served model takes one")
            try:
                return base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("not base64 (standard alphabet, padded)") from None
        if isinstance(image, bytes) and len(image) > MAX_IMAGE_BYTES:
            raise ValueError(f"a frame of {len(image)} bytes; no served model takes over {MAX_IMAGE_BYTES}")
        return image

    @model_validator(mode="after")
    def _one_observation(self) -> "PlanRequest":
        if self.image is None and not self.observation:
            raise ValueError("give the agent's observation (or its image, for a camera model)")
        if self.image is not None and self.observation:
            raise ValueError("give observation or image, not both")
        return self

    @property
    def proposals(self) -> list[Any] | None:
        """The actions to compare when an explanation is asked for (None: none asked for)."""
        if isinstance(self.explain, ExplainOptions):
            return self.explain.proposals
        return [] if self.explain else None


class PlanResponse(BaseModel):
    """The action and why: the model version, its disagreement, whether (and why) the fallback acted."""

    action: list[float] = Field(description="The action to take now (the model's action size).")
    model_version: str = Field(description="The model version that planned it.")
    plan_id: str = Field(description="Unique id of this decision.")
    disagreement: float | None = Field(
        description="Mean ensemble disagreement along the chosen plan (null if not finite).")
    fallback: bool = Field(description="The fallback policy acted instead of the plan.")
    fallback_reason: Literal["deadline", "uncertainty", "error"] | None = Field(
        description="Why the fallback acted: no planning round fit the deadline, the disagreement was over its "
                    "threshold, or planning failed; null when the plan acted.")
    decision: Literal["planned", "fallback", "shielded", "policy"] = Field(
        default="planned", description="Why this action: the plan's; the fallback's (see fallback_reason); the "
                                       "shield's, replacing an action predicted to violate a constraint; or the "
                                       "policy's (mode 'policy').")
    shielded_constraint: Literal["no_fly_zone", "state_box", "speed", "agent_contact", "shelf"] | None = Field(
        default=None, description="The constraint the replaced action was predicted to violate (decision "
                                  "'shielded'); else null.")
    fallback_action_by: Literal["policy", "zero", "brake", "plan"] | None = Field(
        default=None, description="What gave the fallback's action: the served policy, or the zero action when "
                                  "the model has none (a warehouse robot brakes instead; a camera agent late for "
                                  "its deadline goes on with its previous plan, 'plan', until it has acted on "
                                  "every step of it; then, or without one, 'zero'); null when the fallback did "
                                  "not act.")
    margin: float | None = Field(
        default=None, description="Worst predicted constraint margin of the action over the shield's horizon, "
                                  "worst ensemble member (distance units; negative: a predicted violation); null "
                                  "without constraints.")
    trajectory: list[list[float | None]] | None = Field(
        default=None, description="(H+1) x observation size: the predicted states along the plan; present only "
                                  "when the request asked for it.")
    replayed: bool = Field(default=False, description="A retry answered from the first answer, not planned again.")
    explanation: dict[str, Any] | None = Field(
        default=None, description="The decision's explanation (the body POST /v1/explain answers for its plan_id), "
                                  "present only when the request asked for it.")
    reward_model: str | None = Field(
        default=None, description="The registered reward model that scored the plan (the request's, else the "
                                  "fleet's); absent when the world model's own reward did, or none did (objective "
                                  "'goal', mode 'policy').")


class BatchRequest(BaseModel):
    """Several agents' requests answered together, in order."""

    model_config = ConfigDict(extra="forbid")
    requests: list[PlanRequest] = Field(min_length=1, max_length=MAX_BATCH,
                                        description="The requests, each as POST /v1/plan takes it.")


class BatchResponse(BaseModel):
    responses: list[PlanResponse] = Field(description="One answer per request, in the requests' order.")


class ResetResponse(BaseModel):
    agent_id: str = Field(description="The agent.")
    reset: bool = Field(description="Whether the server knew the agent (its state is forgotten either way).")


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"] = Field(
        description="'degraded': still serving, but telemetry cannot be written (see telemetry_error) or the "
                    "fleet bus cannot be reached (see bus_error).")
    model_version: str = Field(description="The model version being served.")
    telemetry_error: str | None = Field(default=None, description="The telemetry logger's last write error.")
    bus_error: str | None = Field(default=None, description="Why the stream consumer cannot read the fleet bus.")


class ErrorBody(BaseModel):
    """Every error answer (4xx, 5xx): one line, plus the validation errors for a 422."""

    error: str = Field(description="What was wrong, in one line naming the field or value.")
    detail: list[dict[str, Any]] | None = Field(default=None, description="422 only: every validation error.")


def public_body(answer: PlanAnswer) -> dict[str, Any]:
    """An answer's JSON body (HTTP's and the fleet bus's): every field of ``PlanResponse``; ``trajectory`` and
    ``explanation`` only when they were asked for, ``reward_model`` only when a registered reward model planned."""
    body = answer.to_dict()
    for optional in ("trajectory", "explanation", "reward_model"):
        if body[optional] is None:
            del body[optional]
    return body
