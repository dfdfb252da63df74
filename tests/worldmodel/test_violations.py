"""The per-transition violation flag: stored as a nullable column, unknown (never False) where not logged, written
by `collect` from the env's own zone test, and what the latent model's breach head trains on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from worldmodel.data import SchemaError, Transitions, read_transitions, write_transitions
from worldmodel.data import schema as sc
from worldmodel.data.batch import UNKNOWN
from worldmodel.data.images import read_image_transitions
from worldmodel.data.writer import TrajectoryWriter
from worldmodel.envs import IMAGE_KEY
from worldmodel.envs import collect as collect_module
from worldmodel.envs.camera import STATE_INFO
from worldmodel.envs.collect import collect
from worldmodel.latent import LatentConfig, LatentWorldModel
from worldmodel.latent_training import LatentTrainConfig, episodes_from_logs, latent_loss, sample_batch, train_latent

SMALL = LatentConfig(image_shape=(32, 32, 3), latent=16, simnorm_group=4, members=2, hidden=16, depth=4)


def rows(violations: Any = None, b: int = 3) -> Transitions:
    return Transitions.build(obs=np.zeros((b, 2)), actions=np.zeros((b, 1)), rewards=np.zeros(b),
                             new_obs=np.ones((b, 2)), terminateds=np.zeros(b, bool), truncateds=np.zeros(b, bool),
                             eps_id="e", agent_id="a", t=np.arange(b), violations=violations)


def test_flags_round_trip_and_unknown_stays_null(tmp_path: Path) -> None:
    write_transitions(str(tmp_path), rows([1, 0, UNKNOWN]))
    (path,) = tmp_path.rglob("*.parquet")
    column = pq.read_table(path).column(sc.VIOLATIONS)
    assert column.type == pa.bool_() and column.to_pylist() == [True, False, None]
    back = read_transitions(str(tmp_path)).violations
    assert back.dtype == np.int8 and back.tolist() == [1, 0, UNKNOWN]
    assert (rows().violations == UNKNOWN).all()  # a producer that cannot judge leaves every row unknown


def test_logs_without_the_column_read_as_unknown_not_false(tmp_path: Path) -> None:
    table = rows([True, True, False]).to_table()
    old = table.drop_columns([sc.VIOLATIONS])  # a file written before the column existed
    old = old.replace_schema_metadata(table.schema.metadata)
    (tmp_path / "d").mkdir()
    pq.write_table(old, tmp_path / "d" / "old.parquet")
    write_transitions(str(tmp_path), rows([True, True, False]))
    back = read_transitions(str(tmp_path)).violations
    assert sorted(back.tolist()) == [UNKNOWN] * 3 + [0, 1, 1]


def test_a_wrongly_typed_column_is_named(tmp_path: Path) -> None:
    table = rows().to_table()
    index = table.schema.get_field_index(sc.VIOLATIONS)
    bad = table.set_column(index, pa.field(sc.VIOLATIONS, pa.string()), pa.array(["x"] * 3))
    pq.write_table(bad.replace_schema_metadata(table.schema.metadata), tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match="column 'violations' has type string, expected bool"):
        read_transitions(str(tmp_path))


class ZoneProbe(gymnasium.Wrapper):
    """Records, for every step, the zone test recomputed from the true position: keyed by the new observation."""

    seen: dict[bytes, bool] = {}

    def step(self, action: np.ndarray) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        position = (info[STATE_INFO] if STATE_INFO in info else obs)[:2]
        zones = info["no_fly_zones"]
        inside = bool((np.linalg.norm(zones[:, :2] - position, axis=1) < zones[:, 2]).any())
        ZoneProbe.seen[_key(obs)] = inside
        return obs, reward, terminated, truncated, info


def _key(obs: Any) -> bytes:
    return np.ascontiguousarray(obs[IMAGE_KEY] if isinstance(obs, dict) else obs).tobytes()


@pytest.fixture()
def probed(monkeypatch: pytest.MonkeyPatch) -> dict[bytes, bool]:
    real = collect_module.make_env
    ZoneProbe.seen = {}
    monkeypatch.setattr(collect_module, "make_env", lambda env_id, **kw: ZoneProbe(real(env_id, **kw)))
    return ZoneProbe.seen


def test_collect_writes_the_envs_own_zone_test(probed: dict[bytes, bool]) -> None:
    data = collect("Nav2D-v0", episodes=6, seed=1, env_kwargs={"num_no_fly_zones": 3, "zone_radius": 2.0},
                   num_envs=3)
    expected = np.array([probed[_key(o)] for o in data.new_obs], np.int8)
    assert np.array_equal(data.violations, expected)  # every row known
    assert 0 < expected.sum() < len(expected)  # the toy has both answers
    assert (collect("Nav2D-v0", episodes=2, seed=1).violations == 0).all()  # no zones: known, never inside


def test_pixel_logs_carry_the_flag_to_the_breach_head(tmp_path: Path, probed: dict[bytes, bool]) -> None:
    data = collect("PixelNav2D-v0", episodes=4, seed=2, num_envs=2,
                   env_kwargs={"image_size": 32, "num_no_fly_zones": 3, "zone_radius": 2.0})
    expected = np.array([probed[_key(f)] for f in data.new_obs_image], np.int8)
    assert np.array_equal(data.rows.violations, expected) and expected.any()
    TrajectoryWriter(str(tmp_path), "PixelNav2D-v0").write(data)
    episodes = episodes_from_logs(read_image_transitions(str(tmp_path)))
    valid = episodes.valid()
    assert episodes.breach[valid].sum() == expected.sum() and not np.isnan(episodes.breach[valid]).any()


def test_unknown_flags_train_nothing(probed: dict[bytes, bool]) -> None:
    data = collect("PixelNav2D-v0", episodes=2, seed=3, num_envs=2, env_kwargs={"image_size": 32})
    episodes = episodes_from_logs(data)
    unknown = type(episodes)(episodes.frames, episodes.actions, episodes.rewards,
                             np.full_like(episodes.breach, np.nan), episodes.lengths)
    torch.manual_seed(0)
    model, cfg = LatentWorldModel(SMALL), LatentTrainConfig(horizon=2)
    batch = sample_batch(unknown, SMALL.frames, 8, 2, np.random.default_rng(0))
    loss, parts = latent_loss(model, batch, cfg)
    assert torch.isfinite(loss) and parts["breach"] == 0.0
    loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.breach_head.parameters())
    known = latent_loss(model, sample_batch(episodes, SMALL.frames, 8, 2, np.random.default_rng(0)), cfg)[1]
    assert known["breach"] > 0.0
    report = train_latent(model, unknown, LatentTrainConfig(steps=1, batch=4, horizon=1))
    assert report.breach_flags == 0
    assert train_latent(model, episodes, LatentTrainConfig(steps=1, batch=4, horizon=1)).breach_flags == len(data)
