"""Live A/B assignment: a stable hash, sticky agents, the share over many agents, whole sites."""

from __future__ import annotations

import numpy as np

from serving.ab import assign, stable_hash

M64 = (1 << 64) - 1


def _reference(key: str) -> int:
    """FNV-1a 64 then splitmix64's finaliser, one character at a time."""
    h = 0xCBF29CE484222325
    for c in key.encode():
        h = ((h ^ c) * 0x100000001B3) & M64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & M64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & M64
    return h ^ (h >> 31)


def test_stable_hash_matches_the_reference_whatever_the_batch() -> None:
    keys = ["a", "robot-17", "t1:site:floor-3", "x" * 128]
    assert stable_hash(keys).tolist() == [_reference(k) for k in keys]
    assert stable_hash(["a"]).tolist() == [_reference("a")]  # padding to a batch's longest key changes nothing
    assert _reference("") == stable_hash([""]).tolist()[0] and len(stable_hash([])) == 0


def test_assignment_is_sticky_and_near_the_share() -> None:
    ids = [f"agent-{i}" for i in range(10_000)]
    arms = assign("t1", ids, [None] * len(ids), 0.1)
    assert abs(arms.mean() - 0.1) < 0.01  # 3 sigma of a binomial share over 10,000 agents
    order = np.random.default_rng(0).permutation(len(ids))[:500]  # another batch, another order
    again = assign("t1", [ids[i] for i in order], [None] * 500, 0.1)
    assert (again == arms[order]).all()
    wider = assign("t1", ids, [None] * len(ids), 0.2)
    assert wider[arms].all() and abs(wider.mean() - 0.2) < 0.012  # raising the share keeps who was in
    other = assign("t2", ids, [None] * len(ids), 0.1)
    assert (other != arms).mean() > 0.1  # another test draws its own agents


def test_a_site_is_in_one_arm() -> None:
    sites = [f"floor-{i // 25}" for i in range(40 * 25)]  # 40 sites of 25 robots
    ids = [f"robot-{i}" for i in range(len(sites))]
    arms = assign("t1", ids, sites, 0.5).reshape(40, 25)
    assert (arms.all(1) | ~arms.any(1)).all()  # every site whole
    assert 0 < arms[:, 0].sum() < 40  # both arms get sites
    lone = assign("t1", ["robot-0"], [None], 0.5)  # without a site, by agent id
    assert lone.dtype == bool and lone.shape == (1,)
