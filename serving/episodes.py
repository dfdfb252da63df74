"""What every plan request carries: ``plan_body`` (one request's JSON body) and ``EpisodeSteps`` (per agent,
the step index ``t`` of its next observation and the action it was last given, for ``prev_action``).

Both clients of ``serving.client`` and the simulated fleet (``serving.fleet``) build their bodies here, so
the server logs a transition only when it knows both ends and the action (see ``serving.client``).
Observations, actions and no-fly zones may be lists or numpy arrays; they are sent as lists of floats.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["ArrayLike", "EpisodeSteps", "plan_body"]

ArrayLike = Sequence[float] | np.ndarray


def plan_body(agent_id: str, observation: ArrayLike, *, reward: float | None = None, terminated: bool = False,
              truncated: bool = False, objective: dict[str, Any] | None = None, deadline_ms: float | None = None,
              return_trajectory: bool = False, request_id: str | None = None, t: int | None = None,
              prev_action: ArrayLike | None = None, site: str | None = None) -> dict[str, Any]:
    """The JSON body of one plan request, with a fresh ``request_id`` (uuid4 hex) when none is given.

    Args:
        observation: (S,) list or array.
        objective: {"name": "learned" | "goal", "no_fly_zones": (Z, 3) list or array}; None: the server's default.
        t: step index of ``observation`` in the agent's episode (0 at its first observation).
        prev_action: (A,) the action the agent executed after its previous observation.
        site: a warehouse robot's floor (robots of one site are planned jointly).
    """
    body: dict[str, Any] = {"agent_id": agent_id, "observation": _vector("observation", observation, "S"),
                            "request_id": request_id or uuid.uuid4().hex}
    if t is not None:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
            raise ValueError(f"t must be an integer >= 0 (the observation's step index), got {t!r}")
        body["t"] = int(t)
    if prev_action is not None:
        body["prev_action"] = _vector("prev_action", prev_action, "A")
    if reward is not None:
        body["reward"] = float(reward)
    if terminated:
        body["terminated"] = True
    if truncated:
        body["truncated"] = True
    if objective is not None:
        body["objective"] = _objective(objective)
    if deadline_ms is not None:
        body["deadline_ms"] = float(deadline_ms)
    if site is not None:
        body["site"] = site
    if return_trajectory:
        body["return_trajectory"] = True
    return body


def _vector(name: str, values: ArrayLike, dim: str) -> list[float]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one vector ({dim},), got shape {array.shape}")
    return array.tolist()


def _objective(objective: dict[str, Any]) -> dict[str, Any]:
    out = dict(objective)
    if "no_fly_zones" in out:
        out["no_fly_zones"] = np.asarray(out["no_fly_zones"], dtype=np.float64).reshape(-1, 3).tolist()
    return out


@dataclass
class _Where:
    """One agent's place in its episode, as its client last saw it."""

    t: int = 0
    """Step index of the agent's next observation."""
    action: list[float] | None = None
    """(A,) the last answer's action, what the agent executes unless it reports otherwise; None without one."""
    failed: bool = False
    """The agent's last call got no answer: only the caller knows what the agent did instead."""
    last: dict[str, Any] | None = None
    """The agent's last body: a call reusing its request_id is a retry and resends its t and prev_action."""


class EpisodeSteps:
    """Per agent, the step index of its next observation and the action it was last given, so that every plan
    body carries ``t`` and ``prev_action``; a caller's own ``t`` or ``prev_action`` wins. It holds one small entry
    per agent the client has served (``forget`` drops one)."""

    def __init__(self) -> None:
        self._agents: dict[str, _Where] = {}

    def body(self, agent_id: str, observation: ArrayLike, **options: Any) -> dict[str, Any]:
        """``plan_body`` with ``t`` and ``prev_action`` filled in; raises ``ValueError`` when the agent's previous
        call failed and the caller does not say what the agent executed (the server would log a guess)."""
        where = self._agents.setdefault(agent_id, _Where())
        last = where.last
        if last is not None and options.get("request_id") == last["request_id"]:  # a retry: the same step
            options["t"] = last.get("t") if options.get("t") is None else options["t"]
            if options.get("prev_action") is None:
                options["prev_action"] = last.get("prev_action")
            return plan_body(agent_id, observation, **options)
        t = where.t if options.get("t") is None else options["t"]
        if options.get("prev_action") is None and t > 0:
            if where.failed:
                raise ValueError(f"agent {agent_id!r}: its previous plan request failed, so the client cannot "
                                 "report the action it executed; pass prev_action= (what the agent did instead), "
                                 "or t=0 to start a new episode")
            options["prev_action"] = where.action
        return plan_body(agent_id, observation, **(options | {"t": t}))

    def settle(self, bodies: list[dict[str, Any]], answers: list[dict[str, Any]] | None) -> None:
        """Record what came of ``bodies``: their ``answers`` in order, or None when the call failed."""
        for i, body in enumerate(bodies):
            where = self._agents.setdefault(body["agent_id"], _Where())
            ended = bool(body.get("terminated") or body.get("truncated"))  # the next observation starts an episode
            where.t = 0 if ended else body["t"] + 1
            where.action = None if ended or answers is None else list(answers[i]["action"])
            where.failed = answers is None and not ended
            where.last = body

    def forget(self, agent_id: str) -> None:
        """The agent's episode was reset on the server: its next observation is step 0."""
        self._agents.pop(agent_id, None)

    def batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Batch items (``plan`` keyword arguments with agent_id and observation) as bodies."""
        out = []
        for i, item in enumerate(requests):
            try:
                out.append(self.body(**item))
            except TypeError as err:
                raise ValueError(f"requests[{i}]: {err} (keys: {sorted(item)})") from None
        return out
