"""API v1 of the fleet endpoint: request and response bodies, validated at the door.

Everything a client can get wrong is caught here or in the ingress with a 4xx
whose message names the field: malformed JSON, unknown fields, a non-finite or
absurdly large observation, an unknown objective, zones that are not (x, y, r).
The observation's length depends on the served model and is checked by the ingress.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worldmodel.data.writer import AGENT_ID_PATTERN

MAX_ABS_OBS = 1e6
"""Largest observation magnitude accepted: beyond it a value is a unit or encoding bug, not a state."""
MAX_OBS_DIM = 4096
MAX_ZONES = 8
MAX_BATCH = 1024

AgentId = Annotated[str, Field(pattern=AGENT_ID_PATTERN.pattern, description="agent id: letters, digits, . _ -")]


class Objective(BaseModel):
    """What the agent wants: the learned reward or Nav2D's analytic goal reward, plus no-fly zones."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["learned", "goal"] = "learned"
    no_fly_zones: list[tuple[float, float, Annotated[float, Field(ge=0)]]] = Field(default_factory=list,
                                                                                 max_length=MAX_ZONES)

    @field_validator("no_fly_zones")
    @classmethod
    def _finite_zones(cls, zones: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
        for i, zone in enumerate(zones):
            if not all(math.isfinite(v) and abs(v) <= MAX_ABS_OBS for v in zone):
                raise ValueError(f"zone {i} must hold finite numbers of magnitude <= {MAX_ABS_OBS:g}")
        return zones


class PlanRequest(BaseModel):
    """One agent asking for its next action."""

    model_config = ConfigDict(extra="forbid")
    agent_id: AgentId
    observation: list[float] = Field(min_length=1, max_length=MAX_OBS_DIM)
    reward: float | None = Field(default=None, description="reward of the agent's previous action")
    done: bool = Field(default=False, description="this observation is terminal: the episode ended")
    truncated: bool = Field(default=False, description="the episode was cut (time limit) at this observation")
    objective: Objective | None = None
    deadline_ms: float | None = Field(default=None, gt=0, le=60_000, description="answer within this many ms")
    request_id: str | None = Field(default=None, min_length=1, max_length=128,
                                   description="idempotency key: a retry with the same id is answered once")
    return_trajectory: bool = Field(default=False, description="include the predicted trajectory of the plan")

    @field_validator("observation")
    @classmethod
    def _finite_observation(cls, obs: list[float]) -> list[float]:
        for i, v in enumerate(obs):
            if not math.isfinite(v):
                raise ValueError(f"observation[{i}] is {v}; every value must be finite")
            if abs(v) > MAX_ABS_OBS:
                raise ValueError(f"observation[{i}] = {v:g} is larger than {MAX_ABS_OBS:g} in magnitude")
        return obs

    @field_validator("reward")
    @classmethod
    def _finite_reward(cls, reward: float | None) -> float | None:
        if reward is not None and not (math.isfinite(reward) and abs(reward) <= MAX_ABS_OBS):
            raise ValueError(f"reward must be finite with magnitude <= {MAX_ABS_OBS:g}, got {reward}")
        return reward


class PlanResponse(BaseModel):
    """The action and why: the model version, uncertainty, fallback flag and (when asked) the predicted path."""

    action: list[float]
    model_version: str
    plan_id: str
    uncertainty: float
    fallback: bool
    trajectory: list[list[float]] | None = None
    replayed: bool = Field(default=False, description="a retry answered from the first answer, not replanned")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: list[PlanRequest] = Field(min_length=1, max_length=MAX_BATCH)


class BatchResponse(BaseModel):
    responses: list[PlanResponse]


class ResetResponse(BaseModel):
    agent_id: str
    reset: bool


class ErrorBody(BaseModel):
    error: str
    detail: list[dict] | None = None
