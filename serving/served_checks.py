"""What a request must fit in the served model (observation or frame sizes, action size, objectives and their
constraints, modes, proposals, reward models), checked by both transports after the body's own validation
(``serving.schema``), and the OpenAPI schema the app publishes with the served sizes stated."""

from __future__ import annotations

import copy
import math
from typing import Any

from serving.schema import Objective, PlanRequest


def check_request(req: PlanRequest, spec: dict[str, Any], prefix: str = "") -> str | None:
    """What depends on the served model (observation and action sizes, objective, constraints, mode, reward
    model): the problem, if any.

    The one check of both transports (HTTP and the fleet bus), after the body's own validation.

    Args:
        spec: the planner deployment's ``info()`` (``model_version``, ``env_id``, ``obs_dim``, ``act_dim``,
            ``act_low``, ``act_high``, ``objectives``, ``zones``, ``horizon``, ``modes``, ``reward_models``).
        prefix: put before the field's name (a batch item's place, e.g. ``"requests.3."``).
    """
    model = f"model {spec['model_version']} ({spec['env_id']})"
    problem = check_image(req, spec, model, prefix)
    if problem is not None:
        return problem
    if req.image is None and len(req.observation) != spec["obs_dim"]:
        return f"{prefix}observation: has {len(req.observation)} values, {model} expects {spec['obs_dim']}"
    if req.prev_action is not None and len(req.prev_action) != spec["act_dim"]:
        return f"{prefix}prev_action: has {len(req.prev_action)} values, {model} expects {spec['act_dim']}"
    if req.site is not None and not spec.get("sites", False):
        return f"{prefix}site: {model} plans each agent alone; sites are for Warehouse-v1 fleet models"
    if req.mode not in spec.get("modes", ["plan"]):
        return f"{prefix}mode: {req.mode!r} needs a policy and {model} has none (train one: wm policy train)"
    if req.reward_model is not None and req.reward_model not in spec.get("reward_models", []):
        fitting = ", ".join(spec.get("reward_models", [])) or "none"
        return f"{prefix}reward_model: {req.reward_model!r} is not a registered reward model fitting {model}'s " \
               f"spaces; those that fit: {fitting}"
    return check_objective(req.objective, spec, prefix) or check_proposals(req.proposals or [], spec,
                                                                             f"{prefix}explain.")


def check_image(req: PlanRequest, spec: dict[str, Any], model: str, prefix: str) -> str | None:
    """A camera model takes an image of exactly its frame's H*W*C bytes; a vector model takes none."""
    shape = spec.get("image_shape")
    if shape is None:
        return None if req.image is None else f"{prefix}image: {model} observes vectors; send observation"
    size = math.prod(shape)
    if req.image is None:
        return f"{prefix}image: {model} observes camera frames; send image (base64 of {size} bytes, {shape} uint8)"
    if len(req.image) != size:
        sides = " x ".join(map(str, shape))
        return f"{prefix}image: has {len(req.image)} bytes, {model} expects {size} ({sides} uint8)"
    return None


def check_objective(objective: Objective | None, spec: dict[str, Any], prefix: str) -> str | None:
    """The objective's name, constraints and action bounds against the served model (``check_request``)."""
    if objective is None:
        return None
    if objective.name not in spec["objectives"]:
        return f"{prefix}objective.name: {objective.name!r} is not served for {spec['env_id']}; " \
               f"choose one of {spec['objectives']}"
    for name in ("no_fly_zones", "bounds", "max_speed"):
        if getattr(objective, name) not in (None, []) and not spec["zones"]:
            return f"{prefix}objective.{name}: {spec['env_id']} has no positions to constrain"
    if objective.action_bounds is not None:
        low, high = objective.action_bounds
        if len(low) != spec["act_dim"]:
            return f"{prefix}objective.action_bounds: has {len(low)} values per bound, model " \
                   f"{spec['model_version']} expects {spec['act_dim']}"
        box_low, box_high = spec["act_low"], spec["act_high"]
        if any(lo < b for lo, b in zip(low, box_low)) or any(hi > b for hi, b in zip(high, box_high)):
            return f"{prefix}objective.action_bounds: [{low}, {high}] is not inside the model's action box " \
                   f"[{list(box_low)}, {list(box_high)}]"
    return None


def check_proposals(proposals: list[Any], spec: dict[str, Any], prefix: str) -> str | None:
    """Each proposal an action of the model's size, or a sequence of the served horizon of them."""
    for i, proposal in enumerate(proposals):
        steps = proposal if isinstance(proposal[0], list) else [proposal]
        if isinstance(proposal[0], list) and len(steps) != spec["horizon"]:
            return f"{prefix}proposals.{i}: a sequence of {len(steps)} actions; the served horizon is {spec['horizon']}"
        if any(len(a) != spec["act_dim"] for a in steps):
            return f"{prefix}proposals.{i}: an action of the wrong size; model {spec['model_version']} " \
                   f"expects {spec['act_dim']} values"
    return None


def served_openapi(schema: dict[str, Any], obs_dim: int, act_dim: int, modes: list[str] | None = None,
                   sites: bool = True, reward_models: list[str] | None = None,
                   camera: bool = False) -> dict[str, Any]:
    """The app's OpenAPI ``schema`` with the served model's sizes and modes stated: a copy, the input is left
    as is.

    ``PlanRequest.observation`` and ``ExplainRequest.observation``'s array get minItems = maxItems =
    ``obs_dim``, ``prev_action``'s array ``act_dim``, and ``PlanResponse.action`` ``act_dim``;
    ``PlanRequest.mode`` lists ``modes`` (the served model's: 'policy' only with a policy) when given;
    ``PlanRequest.site`` is left out when the model plans each agent alone (``sites`` False);
    ``PlanRequest.reward_model`` lists ``reward_models`` (the registered ones fitting the served model, the
    planner's ``info()``), and is left out when there are none or they are not given: a schema-valid name must
    be one the server takes.
    A plan request carries what the served model reads, required: ``image`` for a camera model (``camera``),
    else ``observation``; the other is left out.
    """
    out = copy.deepcopy(schema)
    schemas = out.get("components", {}).get("schemas", {})
    wanted, other = ("image", "observation") if camera else ("observation", "image")
    for name in ("PlanRequest", "PlanRequest-Input"):
        if name not in schemas:
            continue
        properties = schemas[name].get("properties", {})
        properties.pop(other, None)
        schemas[name]["required"] = sorted({*schemas[name].get("required", []), wanted})
        if not sites:
            properties.pop("site", None)
        if "reward_model" in properties:
            _enumerate(properties, "reward_model", reward_models or [])
    if modes is not None:
        for name in ("PlanRequest", "PlanRequest-Input"):
            mode = schemas.get(name, {}).get("properties", {}).get("mode")
            if mode is not None:
                mode["enum"] = list(modes)
    for model, field, size in (("PlanRequest", "observation", obs_dim), ("PlanRequest", "prev_action", act_dim),
                               ("PlanResponse", "action", act_dim), ("ExplainRequest", "observation", obs_dim)):
        for name in (model, f"{model}-Input", f"{model}-Output"):  # FastAPI names a model by its use when they differ
            prop = schemas.get(name, {}).get("properties", {}).get(field)
            if prop is None:
                continue
            for branch in [prop, *prop.get("anyOf", [])]:
                if branch.get("type") == "array":
                    branch["minItems"] = branch["maxItems"] = size
    return out


def _enumerate(properties: dict[str, Any], field: str, values: list[str]) -> None:
    """State an optional string field's allowed ``values`` (an empty list: the field is left out)."""
    if not values:
        del properties[field]
        return
    for branch in properties[field].get("anyOf", [properties[field]]):
        if branch.get("type") == "string":
            branch.pop("pattern", None)
            branch["enum"] = list(values)
