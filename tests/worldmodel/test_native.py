"""The native CPU kernel against torch's path: same MLP outputs, same dynamics steps, a sound normal
stream, and the same answers from the portable (AVX2, generic) builds as from this CPU's own."""

from __future__ import annotations

import math
import platform
import shutil

import pytest
import torch

from worldmodel import native
from worldmodel.dynamics import DeterministicDynamics, ProbabilisticEnsemble
from worldmodel.native.build import FLAGS, Library, build
from worldmodel.nn import EnsembleMLP, Normalizer
from worldmodel.reward import RewardModel

needs_kernel = pytest.mark.skipif(native.library() is None, reason=f"native kernel {native.status()}")


def test_the_kernel_builds_wherever_there_is_a_compiler() -> None:
    if shutil.which("g++") or shutil.which("c++"):
        assert native.library() is not None, native.status()
        assert native.status().startswith("loaded from")


def test_fleetwm_native_0_keeps_torchs_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWM_NATIVE", "0")
    native.library.cache_clear()
    try:
        assert native.library() is None and "FLEETWM_NATIVE=0" in native.status()
        assert native.standard_normal((3,)) is None
        folded = EnsembleMLP(2, 4, 3, 16, 1).folded(Normalizer(4), torch.ones(3), torch.zeros(3))
        assert folded.kernel is None and folded(torch.randn(5, 4)).shape == (2, 5, 3)
    finally:
        monkeypatch.delenv("FLEETWM_NATIVE")
        native.library.cache_clear()


def _folded(members: int, in_dim: int, out_dim: int, hidden: int, layers: int, seed: int = 0):
    torch.manual_seed(seed)
    mlp = EnsembleMLP(members, in_dim, out_dim, hidden, layers)
    norm = Normalizer(in_dim)
    norm.mean.normal_()
    norm.std.uniform_(0.5, 2.0)
    return mlp.folded(norm, torch.rand(out_dim) + 0.5, torch.randn(out_dim))


def _torch_path(folded, *parts: torch.Tensor) -> torch.Tensor:
    kernel, folded.kernel = folded.kernel, None
    try:
        return folded(*parts)
    finally:
        folded.kernel = kernel


@needs_kernel
@pytest.mark.parametrize("members, hidden, layers, out_dim", [(1, 64, 2, 1), (5, 64, 2, 12), (3, 20, 3, 17),
                                                              (2, 200, 1, 16), (4, 33, 2, 5)])
@pytest.mark.parametrize("rows", [0, 1, 23, 24, 25, 100])
def test_the_fused_mlp_matches_torchs_path(members: int, hidden: int, layers: int, out_dim: int, rows: int) -> None:
    folded = _folded(members, 8, out_dim, hidden, layers)
    assert folded.kernel is not None
    shared = torch.randn(rows, 6)  # (B, D): one input for every member
    per_member = torch.randn(rows, members, 2).transpose(0, 1)  # (E, B, D) with rows E*D apart
    got = folded(shared, per_member)
    assert got.shape == (members, rows, out_dim)
    torch.testing.assert_close(got, _torch_path(folded, shared, per_member), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_inputs_of_any_layout_and_threads_give_the_same_answer() -> None:
    folded = _folded(3, 8, 4, 32, 2)
    base = torch.randn(3, 50, 8)
    reference = folded(base)
    expanded = torch.randn(50, 8)[None].expand(3, 50, 8)  # member stride 0
    torch.testing.assert_close(folded(expanded), _torch_path(folded, expanded), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded(base[..., :3], base[..., 3:]), reference)  # the parts joined on the fly
    torch.testing.assert_close(folded(base.transpose(0, 1).contiguous().transpose(0, 1)), reference)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = folded(base)
        torch.set_num_threads(3)  # more threads than tiles per member here, and than this machine's cores
        torch.testing.assert_close(folded(base), one, rtol=0, atol=0)
    finally:
        torch.set_num_threads(threads)


@needs_kernel
def test_inputs_that_need_gradients_take_torchs_path() -> None:
    folded = _folded(2, 8, 3, 16, 2)
    x = torch.randn(4, 8, requires_grad=True)
    assert folded.native_for(x) is None
    folded(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@needs_kernel
@pytest.mark.parametrize("rows", [1, 24, 97])
def test_a_dynamics_step_matches_torchs_path_across_the_log_variance_bounds(rows: int) -> None:
    torch.manual_seed(0)
    model = ProbabilisticEnsemble(6, 2, members=3, hidden=32, layers=2)
    with torch.no_grad():
        for p in model.net.parameters():
            p.mul_(4)  # raw log-variances far outside the bounds on both sides
        model.delta_norm.std.uniform_(0.1, 2.0)
        model.var_scale.uniform_(0.5, 2.0)
    folded = model.folded()
    obs, action, noise = torch.randn(3, rows, 6) * 3, torch.randn(rows, 2), torch.randn(3, rows, 6)
    mean, draw = folded.sample(obs, action, noise)
    kernel, folded.mlp.kernel = folded.mlp.kernel, None
    want_mean, want_draw = folded.sample(obs, action, noise)
    folded.mlp.kernel = kernel
    torch.testing.assert_close(mean, want_mean, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(draw, want_draw, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(folded.mean(obs, action), want_mean, rtol=1e-5, atol=1e-4)
    # Both bounds were reached, so both ends of the soft bound were compared.
    logvar = model(obs, action).var.log() - 2 * torch.log(model.delta_norm.std)
    assert (logvar - model.min_logvar).abs().min() < 0.05 and (logvar - model.max_logvar).abs().min() < 0.05
    none, only_draw = folded.sample(obs, action, noise, want_mean=False)
    assert none is None
    torch.testing.assert_close(only_draw, want_draw, rtol=1e-5, atol=1e-4)


@needs_kernel
def test_a_step_can_write_into_a_spent_state_buffer() -> None:
    folded = ProbabilisticEnsemble(6, 2, members=2, hidden=16, layers=1).folded()
    obs, action = torch.randn(2, 10, 6), torch.randn(10, 2)
    _, first = folded.sample(obs, action, 7)
    _, second = folded.sample(obs, action, 8, out=first)
    assert second.data_ptr() == first.data_ptr()
    _, again = folded.sample(obs, action, 8)
    torch.testing.assert_close(second, again, rtol=0, atol=0)


@needs_kernel
def test_a_deterministic_models_draw_is_its_mean() -> None:
    folded = DeterministicDynamics(6, 2, members=2, hidden=16, layers=2).folded()
    obs, action = torch.randn(2, 30, 6), torch.randn(30, 2)
    mean, draw = folded.sample(obs, action, 5)
    assert draw is mean
    torch.testing.assert_close(mean, _torch_path(folded.mlp, obs, action)[..., :6] + obs, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_the_kernels_normal_stream_is_standard_normal_and_seeded() -> None:
    z = native.standard_normal((400_000,), torch.Generator().manual_seed(3)).double()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(((z - z.mean()) ** 3).mean()) < 0.02 and abs(((z - z.mean()) ** 4).mean() - 3) < 0.05
    ordered = z.sort().values
    cdf = 0.5 * (1 + torch.erf(ordered / math.sqrt(2)))
    empirical = torch.arange(1, len(z) + 1, dtype=torch.float64) / len(z)
    assert (cdf - empirical).abs().max() < 1.63 / math.sqrt(len(z))  # Kolmogorov-Smirnov at 1%
    neighbours = torch.corrcoef(torch.stack([z[:-1], z[1:]]))[0, 1]
    assert abs(neighbours) < 0.01
    again = native.standard_normal((400_000,), torch.Generator().manual_seed(3)).double()
    other = native.standard_normal((400_000,), torch.Generator().manual_seed(4)).double()
    assert torch.equal(z, again) and abs(torch.corrcoef(torch.stack([z, other]))[0, 1]) < 0.01


@needs_kernel
def test_seeded_draws_are_standard_normal_whatever_the_threads() -> None:
    model = ProbabilisticEnsemble(2, 1, members=2, hidden=8, layers=1)
    with torch.no_grad():
        for p in model.net.parameters():
            p.zero_()  # change 0, log-variance 0 inside wide bounds: the draw is the noise itself
        model.max_logvar.fill_(30.0)
        model.min_logvar.fill_(-30.0)
    folded = model.folded()
    obs, action = torch.zeros(2, 50_000, 2), torch.zeros(50_000, 1)
    _, z = folded.sample(obs, action, 11)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            assert torch.equal(folded.sample(obs, action, 11)[1], z)
    finally:
        torch.set_num_threads(threads)
    assert not torch.equal(folded.sample(obs, action, 12)[1], z)
    # A rollout asks for one seed per horizon step: all different, and the same again from the same generator.
    seeds = [folded.noise((30, 2, 50_000, 2), torch.Generator().manual_seed(4), obs) for _ in range(2)]
    assert seeds[0] == seeds[1] and len(set(seeds[0])) == 30


def _cpu_has(flag: str) -> bool:
    try:
        return flag in open("/proc/cpuinfo").read().split()
    except OSError:
        return False


@needs_kernel
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 builds")
@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64"])  # AVX2, then plain SSE2
def test_portable_builds_give_the_same_answers(march: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    if march == "x86-64-v3" and not _cpu_has("avx2"):
        pytest.skip("this CPU cannot run an AVX2 build")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # test builds stay out of the user's cache
    lib = Library(build(tuple("-march=" + march if f == "-march=native" else f for f in FLAGS)))
    folded = _folded(3, 8, 12, 40, 2)
    parts = (torch.randn(37, 6), torch.randn(3, 37, 2))
    packed = native.PackedMLP(lib, folded.weights, folded.biases)
    torch.testing.assert_close(packed(list(parts)), _torch_path(folded, *parts), rtol=1e-5, atol=1e-5)
    reward = RewardModel(6, 2, hidden=24, layers=2).folded()
    rows = (torch.randn(29, 6), torch.randn(29, 2), torch.randn(29, 6))
    packed = native.PackedMLP(lib, reward.mlp.weights, reward.mlp.biases)
    torch.testing.assert_close(packed(list(rows)), _torch_path(reward.mlp, *rows), rtol=1e-5, atol=1e-5)
    dynamics = ProbabilisticEnsemble(6, 2, members=3, hidden=24, layers=2).folded()
    noise = torch.randn(3, 37, 6)
    packed = native.PackedMLP(lib, dynamics.mlp.weights, dynamics.mlp.biases)
    got = packed.gaussian_step(parts[0], parts[1], dynamics.head, noise)
    dynamics.mlp.kernel = None
    want = dynamics.sample(parts[0], parts[1], noise)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)


def test_bad_kernel_inputs_are_refused_with_the_shapes() -> None:
    lib = native.library()
    if lib is None:
        pytest.skip(native.status())
    folded = _folded(2, 8, 3, 16, 1)
    with pytest.raises(ValueError, match="do not sum to 8"):
        folded.kernel([torch.randn(4, 6), torch.randn(4, 1)])
    with pytest.raises(ValueError, match=r"\(2, B, D\)"):
        folded.kernel([torch.randn(3, 4, 6), torch.randn(4, 2)])


@needs_kernel
def test_a_model_that_has_planned_still_pickles_and_copies() -> None:
    import copy
    import pickle

    model = ProbabilisticEnsemble(6, 2, members=2, hidden=16, layers=1)
    obs, action = torch.randn(2, 9, 6), torch.randn(9, 2)
    before = model.folded().mean(obs, action)  # caches the folded form, kernel and all, on the module
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone.folded().mlp.kernel is not None
        torch.testing.assert_close(clone.folded().mean(obs, action), before, rtol=0, atol=0)


@needs_kernel
def test_the_kernels_outputs_are_float32_whatever_torchs_default_dtype() -> None:
    folded = _folded(2, 8, 3, 16, 1)
    parts = (torch.randn(5, 8),)
    want = folded(*parts)
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        got = folded(*parts)
        z = native.standard_normal((100_000,), torch.Generator().manual_seed(0))
    finally:
        torch.set_default_dtype(default)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert z.dtype == torch.float32 and abs(z.std() - 1) < 0.02
