"""Camera agents on the API: a frame as base64 over HTTP or raw bytes on the fleet bus, checked against the served
model's frame shape, and the agent's last frames kept in its record to make the planner's stacks."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from pydantic import ValidationError

from actors.records import AgentRecord, AgentRecords
from serving import rows
from serving.bus import FIELD, IMAGE_FIELD, BadMessage, decode_request, encode_request
from serving.schema import PlanRequest
from serving.served_checks import check_request
from serving.stream_client_sync import request_fields

SHAPE = (4, 5, 3)
CAMERA = {"model_version": "0.3.0", "env_id": "PixelNav2D-v0", "obs_dim": 0, "act_dim": 2, "act_low": [-1, -1],
          "act_high": [1, 1], "objectives": ["learned"], "zones": False, "horizon": 5, "modes": ["plan"],
          "image_shape": list(SHAPE), "frames": 3}
VECTOR = CAMERA | {"env_id": "Nav2D-v0", "obs_dim": 6, "image_shape": None}


def frame(value: int) -> np.ndarray:
    return np.full(SHAPE, value, np.uint8)


def http(image: bytes, **extra: object) -> PlanRequest:
    body = {"agent_id": "cam-1", "image": base64.b64encode(image).decode()} | extra
    return PlanRequest.model_validate_json(json.dumps(body))


def test_a_base64_frame_of_the_served_shape_is_accepted() -> None:
    req = http(frame(7).tobytes(), t=0)
    assert req.image == frame(7).tobytes() and req.observation == []
    assert check_request(req, CAMERA) is None


@pytest.mark.parametrize("image, spec, message", [
    (bytes(59), CAMERA, "image: has 59 bytes, model 0.3.0 (PixelNav2D-v0) expects 60 (4 x 5 x 3 uint8)"),
    (bytes(60), VECTOR, "image: model 0.3.0 (Nav2D-v0) observes vectors; send observation"),
])
def test_a_frame_the_model_does_not_take_is_refused_naming_sizes(image: bytes, spec: dict, message: str) -> None:
    assert check_request(http(image), spec) == message


def test_a_camera_model_asks_for_a_frame() -> None:
    req = PlanRequest.model_validate({"agent_id": "a", "observation": [0.0] * 6})
    assert check_request(req, CAMERA) == "image: model 0.3.0 (PixelNav2D-v0) observes camera frames; send image " \
                                         "(base64 of 60 bytes, [4, 5, 3] uint8)"


@pytest.mark.parametrize("body, message", [
    ({"agent_id": "a", "image": "not base64!"}, "not base64"),
    ({"agent_id": "a", "image": "AAAA", "observation": [1.0]}, "observation or image, not both"),
    ({"agent_id": "a"}, "give the agent's observation"),
])
def test_bad_images_are_refused_at_the_door(body: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PlanRequest.model_validate_json(json.dumps(body))


def test_the_bus_carries_the_raw_frame_in_its_own_field() -> None:
    raw = frame(9).tobytes()
    agent, rid, fields = request_fields({"agent_id": "cam-1", "image": raw, "t": 3})
    assert fields[IMAGE_FIELD] == raw and b"image" not in fields[FIELD]  # no base64 on the bus
    req = decode_request(b"1-0", fields)
    assert (req.agent_id, req.request_id, req.t, req.image) == (agent, rid, 3, raw)
    assert check_request(req, CAMERA) is None
    old = decode_request(b"2-0", encode_request({"agent_id": "v", "observation": [1.0] * 6}))  # version 1 entries
    assert old.image is None and old.observation == [1.0] * 6
    with pytest.raises(BadMessage, match="image: given both"):
        decode_request(b"3-0", {FIELD: json.dumps({"agent_id": "c", "image": "AAAA"}).encode(), IMAGE_FIELD: raw})


def record(frames: np.ndarray | None) -> AgentRecord:
    return AgentRecord("cam-1", "e1", 4, "0.3.0", 0.0, ("r4",), None, obs=np.zeros(0, np.float32), frames=frames)


def test_stacks_continue_the_records_frames_and_start_episodes_with_the_first_repeated() -> None:
    requests = [http(frame(3).tobytes(), t=5), http(frame(8).tobytes(), t=0)]
    kept = np.stack([frame(1), frame(2)])  # (F-1, H, W, C)
    records = [record(kept), record(kept)]
    steps = [rows.continuation(r, rec) for r, rec in zip(requests, records)]
    stacks = rows.frame_stacks(requests, records, steps, SHAPE, depth=3)  # (N, F, H, W, C)
    assert stacks.shape == (2, 3, *SHAPE)
    assert stacks[0, :, 0, 0, 0].tolist() == [1, 2, 3]  # continues its episode: the record's frames, then the new
    assert stacks[1, :, 0, 0, 0].tolist() == [8, 8, 8]  # t 0 starts a new episode: its first frame repeated


def test_records_keep_the_last_frames_and_travel_as_columns() -> None:
    records = [record(np.stack([frame(i), frame(i + 1)])) for i in range(3)]
    packed = AgentRecords.pack(records)
    assert packed.columns["frames"].shape == (3, 2, *SHAPE)
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(packed.unpack(), records))


class CameraPlanner:
    """A served latent planner's calls as the engine makes them: keeps the stacks it was given."""

    def __init__(self) -> None:
        from tests.serving.test_engine import FakePlanner, _Remote

        self.fake, self.stacks, self.hidden = FakePlanner("0.3.0"), [], []
        self.plan, self.info = _Remote(self._plan), _Remote(lambda: CAMERA)
        self.explained: list[np.ndarray] = []
        self.explain = _Remote(lambda obs, *rest: self.explained.append(obs) or {"model_version": "0.3.0"})

    def _plan(self, obs: np.ndarray, *rest: object) -> object:
        import dataclasses

        self.stacks.append(obs.copy())
        self.hidden.append(rest[4])  # a recurrent latent model's (N, Z) predicted latents, NaN rows for none
        batch = self.fake._plan(np.zeros((len(obs), 8), np.float32))  # latents, which no observation is scored against
        return dataclasses.replace(batch, hidden=np.full((len(obs), 8), len(self.stacks), np.float32))


def test_the_engine_plans_from_stacks_of_the_agents_last_frames() -> None:
    from serving.engine import PlanEngine
    from tests.serving.test_engine import FakeLogger, FakeStore, Metrics, run

    planner, store, telemetry = CameraPlanner(), FakeStore(), FakeLogger()
    engine = PlanEngine(planner, store, telemetry, None, Metrics(), None)
    for t in range(4):
        answer, = run(engine, http(frame(10 + t).tobytes(), t=t, reward=None if t == 0 else -1.0,
                                   prev_action=None if t == 0 else [0.5, 0.5]))
        assert answer.action == [0.5, 0.5]
    firsts = [s[0, :, 0, 0, 0].tolist() for s in planner.stacks]  # each call's one agent, its F frames
    assert firsts == [[10, 10, 10], [10, 10, 11], [10, 11, 12], [11, 12, 13]]
    # the hidden state the planner returned (here the call's number) comes back with the agent's next request
    assert planner.hidden[0] is None and [h[0, 0] for h in planner.hidden[1:]] == [1, 2, 3]
    kept = store.records["cam-1"]
    assert kept.frames.shape == (2, *SHAPE) and kept.predicted is None and telemetry.batches == []
    from serving.explain import ExplainRequest, check_explain

    asyncio.run(engine.explain(ExplainRequest(agent_id="cam-1")))  # its current state: its last frames
    assert planner.explained[0][:, 0, 0, 0].tolist() == [12, 13]
    assert "plans from camera frames" in check_explain(ExplainRequest(agent_id="cam-1", observation=[0.0]), CAMERA)


@pytest.mark.parametrize("transport, redis_url", [("http", None), ("redis", "redis://127.0.0.1:1/0")])
def test_a_camera_agents_fleet_request_carries_its_frame(transport: str, redis_url: str | None) -> None:
    from serving.fleet import _body, _Episode
    from serving.fleet_config import FleetConfig

    config = FleetConfig(url="http://127.0.0.1:1", env_id="PixelNav2D-v0", transport=transport, redis_url=redis_url)
    body = _body(config, "cam-1", _Episode(frame(4), {}, {"name": "learned", "no_fly_zones": [[0, 0, 1]]}, t=2,
                                           reward=-1.0, prev_action=np.zeros(2, np.float32)))
    assert "observation" not in body and "objective" not in body and body["t"] == 2
    raw = frame(4).tobytes()
    if transport == "redis":
        assert body["image"] == raw and request_fields(body)[2][IMAGE_FIELD] == raw
    else:
        assert http(raw).image == PlanRequest.model_validate_json(json.dumps(body)).image == raw
