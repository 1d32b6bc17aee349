"""Client-level DP: clipping of the whole update, Gaussian noise from the client's generator."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchchain.errors import ConfigError, TorchchainError
from torchchain.privacy.client_dp import ClientDP, ClipReport, NonFiniteUpdateError, clip_and_noise


def _norm(update: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(v.double().square().sum()) for v in update.values()))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shapes=st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=3), min_size=1, max_size=4),
    scale=st.floats(1e-4, 1e4),
    clip=st.floats(1e-3, 1e3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_clipping_bounds_the_global_norm(seed, shapes, scale, clip, dtype):
    g = _gen(seed)
    update = {f"t{i}": (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype) for i, shape in enumerate(shapes)}
    original = {k: v.clone() for k, v in update.items()}
    out, report = clip_and_noise(update, clip=clip, noise_multiplier=0.0, generator=_gen(0))
    norm = _norm(update)
    assert report.norm_before == pytest.approx(norm, rel=1e-12, abs=1e-300)
    assert report.clipped == (norm > clip)
    assert _norm(out) <= clip * (1 + 1e-6)
    for k in update:
        assert torch.equal(update[k], original[k])  # input untouched
        assert out[k].dtype == dtype and out[k].shape == update[k].shape
        if report.clipped:  # direction kept: a positive multiple of the input
            assert torch.allclose(out[k].double(), update[k].double() * (clip / norm), rtol=1e-5, atol=0)
        else:
            assert torch.equal(out[k], update[k])


def test_clipping_is_global_not_per_tensor():
    update = {"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}
    out, report = clip_and_noise(update, clip=1.0, noise_multiplier=0.0, generator=_gen(0))
    assert report == ClipReport(norm_before=5.0, clipped=True)
    assert out["a"].item() == pytest.approx(0.6) and out["b"].item() == pytest.approx(0.8)


def test_huge_values_do_not_overflow_the_norm():
    update = {"a": torch.full((4,), 1e300, dtype=torch.float64)}
    out, report = clip_and_noise(update, clip=1.0, noise_multiplier=0.0, generator=_gen(0))
    assert report.norm_before == pytest.approx(2e300)
    assert torch.allclose(out["a"], torch.full((4,), 0.5, dtype=torch.float64))


@pytest.mark.parametrize("norm_scale", [0.0, 100.0])  # unclipped (zero) and clipped updates
def test_noise_has_std_sigma_times_clip(norm_scale):
    sigma, clip, n = 1.5, 2.0, 40_000
    update = {"w": torch.randn(n // 2, generator=_gen(1)) * norm_scale, "b": torch.randn(n // 2, generator=_gen(2)) * norm_scale}
    clipped, _ = clip_and_noise(update, clip=clip, noise_multiplier=0.0, generator=_gen(3))
    noised, _ = clip_and_noise(update, clip=clip, noise_multiplier=sigma, generator=_gen(4))
    noise = torch.cat([(noised[k].double() - clipped[k].double()) for k in update])
    expected = sigma * clip  # 3.0; sigma alone (1.5) or clip alone (2.0) would fail by far
    assert abs(float(noise.std()) - expected) / expected < 0.03
    assert abs(float(noise.mean())) < 4 * expected / math.sqrt(n)


def test_noise_is_reproducible_from_the_generator_and_differs_across_generators():
    update = {"w": torch.randn(3, 4, generator=_gen(0)), "b": torch.randn(4, generator=_gen(1))}
    a, _ = clip_and_noise(update, clip=1.0, noise_multiplier=1.0, generator=_gen(42))
    b, _ = clip_and_noise(update, clip=1.0, noise_multiplier=1.0, generator=_gen(42))
    c, _ = clip_and_noise(update, clip=1.0, noise_multiplier=1.0, generator=_gen(43))
    assert all(torch.equal(a[k], b[k]) for k in update)
    assert all(not torch.equal(a[k], c[k]) for k in update)
    g = _gen(42)
    first, _ = clip_and_noise(update, clip=1.0, noise_multiplier=1.0, generator=g)
    second, _ = clip_and_noise(update, clip=1.0, noise_multiplier=1.0, generator=g)
    assert not torch.equal(first["w"], second["w"])  # the generator advances


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_and_devices_are_kept(dtype):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        update = {"x": torch.ones(5, dtype=dtype, device=device), "y": torch.zeros(2, 2, dtype=dtype, device=device)}
        out, _ = clip_and_noise(update, clip=0.5, noise_multiplier=0.1, generator=_gen(0))
        assert list(out) == ["x", "y"]
        for k in update:
            assert out[k].dtype == dtype and out[k].device == update[k].device and out[k].shape == update[k].shape


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_update_is_refused(bad):
    update = {"ok": torch.ones(3), "bad": torch.tensor([1.0, bad])}
    with pytest.raises(NonFiniteUpdateError) as info:
        clip_and_noise(update, clip=1.0, noise_multiplier=1.0, generator=_gen(0))
    assert info.value.tensor == "bad"
    assert isinstance(info.value, TorchchainError) and isinstance(info.value, ValueError)


def test_non_float_tensors_and_bad_generators_are_refused():
    with pytest.raises(TypeError, match="floating-point"):
        clip_and_noise({"i": torch.ones(3, dtype=torch.int64)}, clip=1.0, noise_multiplier=1.0, generator=_gen(0))
    with pytest.raises(TypeError, match="floating-point"):
        clip_and_noise({"l": [1.0, 2.0]}, clip=1.0, noise_multiplier=1.0, generator=_gen(0))
    with pytest.raises(TypeError, match="Generator"):
        clip_and_noise({"x": torch.ones(3)}, clip=1.0, noise_multiplier=1.0, generator=None)


@pytest.mark.parametrize(
    ("clip", "sigma"),
    [(0.0, 1.0), (-1.0, 1.0), (float("nan"), 1.0), (float("inf"), 1.0), (True, 1.0), ("1", 1.0),
     (1.0, 0.0), (1.0, -0.5), (1.0, float("nan")), (1.0, float("inf")), (1.0, 1e7), (1.0, True)],
)
def test_client_dp_config_ranges(clip, sigma):
    with pytest.raises(ConfigError):
        ClientDP(clip=clip, noise_multiplier=sigma)


def test_clip_and_noise_argument_ranges():
    with pytest.raises(ConfigError, match="clip"):
        clip_and_noise({"x": torch.ones(1)}, clip=0.0, noise_multiplier=1.0, generator=_gen(0))
    with pytest.raises(ConfigError, match="noise_multiplier"):
        clip_and_noise({"x": torch.ones(1)}, clip=1.0, noise_multiplier=-1.0, generator=_gen(0))


def test_client_dp_apply_matches_function_and_empty_update():
    cfg = ClientDP(clip=1, noise_multiplier=2)
    assert cfg == ClientDP(clip=1.0, noise_multiplier=2.0) and isinstance(cfg.clip, float)
    update = {"x": torch.arange(4.0)}
    a, ra = cfg.apply(update, generator=_gen(5))
    b, rb = clip_and_noise(update, clip=1.0, noise_multiplier=2.0, generator=_gen(5))
    assert torch.equal(a["x"], b["x"]) and ra == rb
    assert clip_and_noise({}, clip=1.0, noise_multiplier=1.0, generator=_gen(0)) == ({}, ClipReport(0.0, False))
