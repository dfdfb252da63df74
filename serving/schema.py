"""API v1 of the fleet endpoint: request and response bodies, validated at the door.

Everything a client can get wrong is caught here or in the ingress with a 4xx whose one-line
``error`` names the field: malformed JSON, unknown fields, a non-finite or absurdly large number,
a string where a boolean belongs, an unknown objective, zones that are not (x, y, r).
The observation's and the action's lengths depend on the served model: the ingress checks them,
and ``served_openapi`` states them in the OpenAPI schema it publishes.

The ``Field`` descriptions are the API's documentation (OpenAPI, ``/docs``).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from worldmodel.data.writer import AGENT_ID_PATTERN

if TYPE_CHECKING:
    from actors.records import PlanAnswer

MAX_ABS_OBS = 1e6
"""Largest magnitude of any number accepted: beyond it a value is a unit or encoding bug, not a state."""
MAX_OBS_DIM = 4096
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
Zone = tuple[Finite, Finite, Annotated[float, Field(ge=0, le=MAX_ABS_OBS, allow_inf_nan=False)]]


class Objective(BaseModel):
    """What the agent wants: the learned reward or Nav2D's goal reward, plus no-fly zones."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["learned", "goal"] = Field(
        default="learned", description="'learned': the model's reward; 'goal': distance to the goal in the "
                                       "observation (Nav2D). The served model lists what it serves (GET /v1/models).")
    no_fly_zones: list[Zone] = Field(
        default_factory=list, max_length=MAX_ZONES,
        description="Discs [x, y, r] the agent's position must stay out of (models with positions only).")


class PlanRequest(BaseModel):
    """One agent asking for its next action, reporting what happened since its previous request."""

    model_config = ConfigDict(extra="forbid")
    agent_id: AgentId
    observation: list[Finite] = Field(
        min_length=1, max_length=MAX_OBS_DIM,
        description="The agent's current observation; its length is the served model's observation size.")
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
    trajectory: list[list[float | None]] | None = Field(
        default=None, description="(H+1) x observation size: the predicted states along the plan; present only "
                                  "when the request asked for it.")
    replayed: bool = Field(default=False, description="A retry answered from the first answer, not planned again.")


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
    """An answer's JSON body (HTTP's and the fleet bus's): every field of ``PlanResponse``; ``trajectory``
    only when it was asked for."""
    body = answer.to_dict()
    if body["trajectory"] is None:
        del body["trajectory"]
    return body


def check_request(req: PlanRequest, spec: dict[str, Any], prefix: str = "") -> str | None:
    """What depends on the served model (observation and action sizes, objective, zones): the problem, if any.

    The one check of both transports (HTTP and the fleet bus), after the body's own validation.

    Args:
        spec: the planner deployment's ``info()`` (``model_version``, ``env_id``, ``obs_dim``, ``act_dim``,
            ``objectives``, ``zones``).
        prefix: put before the field's name (a batch item's place, e.g. ``"requests.3."``).
    """
    model = f"model {spec['model_version']} ({spec['env_id']})"
    if len(req.observation) != spec["obs_dim"]:
        return f"{prefix}observation: has {len(req.observation)} values, {model} expects {spec['obs_dim']}"
    if req.prev_action is not None and len(req.prev_action) != spec["act_dim"]:
        return f"{prefix}prev_action: has {len(req.prev_action)} values, {model} expects {spec['act_dim']}"
    if req.objective is not None:
        if req.objective.name not in spec["objectives"]:
            return f"{prefix}objective.name: {req.objective.name!r} is not served for {spec['env_id']}; " \
                   f"choose one of {spec['objectives']}"
        if req.objective.no_fly_zones and not spec["zones"]:
            return f"{prefix}objective.no_fly_zones: {spec['env_id']} has no positions to keep out of zones"
    return None


def served_openapi(schema: dict[str, Any], obs_dim: int, act_dim: int) -> dict[str, Any]:
    """The app's OpenAPI ``schema`` with the served model's sizes stated: a copy, the input is left as is.

    ``PlanRequest.observation`` gets minItems = maxItems = ``obs_dim``, ``prev_action``'s array
    ``act_dim``, and ``PlanResponse.action`` ``act_dim``.
    """
    out = copy.deepcopy(schema)
    schemas = out.get("components", {}).get("schemas", {})
    for model, field, size in (("PlanRequest", "observation", obs_dim), ("PlanRequest", "prev_action", act_dim),
                               ("PlanResponse", "action", act_dim)):
        for name in (model, f"{model}-Input", f"{model}-Output"):  # FastAPI names a model by its use when they differ
            prop = schemas.get(name, {}).get("properties", {}).get(field)
            if prop is None:
                continue
            for branch in [prop, *prop.get("anyOf", [])]:
                if branch.get("type") == "array":
                    branch["minItems"] = branch["maxItems"] = size
    return out
