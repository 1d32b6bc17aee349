"""Update codecs: round trips, error bounds, unbiasedness, the rotation, sizes, tags, hostile
payloads (always SerializationError, never another exception), error feedback and bounds."""

from __future__ import annotations

import hashlib
import math
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchchain.errors import ConfigError, SerializationError
from torchchain.updates.codecs import (
    CODECS,
    Codec,
    NoCodec,
    Quantize,
    RotateQuantize,
    TopK,
    codec_from_tag,
    codec_seed,
    error_feedback_step,
    fwht,
    rotation_length,
    rotation_signs,
)
from torchchain.updates.serialize import update_from_bytes, update_to_bytes

SEED = codec_seed(7, "ab" * 32)
LIMIT = 1 << 24

ALL_CODECS = [
    NoCodec(),
    Quantize(8),
    Quantize(4),
    Quantize(2),
    Quantize(1, 64),
    RotateQuantize(8),
    RotateQuantize(4, 128),
    RotateQuantize(1),
    TopK(0.01),
    TopK(0.3),
    TopK(1.0),
]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _update(seed: int = 0) -> dict[str, torch.Tensor]:
    g = _gen(seed)
    return {
        "conv.weight": torch.randn(4, 3, 5, 5, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "fc.weight": torch.randn(10, 300, generator=g) * 0.01,
        "norm.scale": torch.randn((), generator=g).double(),
        "half": torch.randn(7, 3, generator=g).half(),
        "brain": torch.randn(33, generator=g).bfloat16(),
        "empty": torch.zeros(0, 3),
        "const": torch.full((70,), 0.25),
    }


def _roundtrip(codec: Codec, update, *, seed: bytes = SEED, generator=None):
    payload = codec.encode(update, seed=seed, generator=generator or _gen(1))
    return payload, codec.decode(payload, update, seed=seed, max_bytes=len(payload))


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("codec", ALL_CODECS, ids=lambda c: c.tag())
def test_decode_returns_the_template_names_shapes_and_dtypes(codec):
    update = _update()
    payload, decoded = _roundtrip(codec, update)
    assert payload == update_to_bytes(update_from_bytes(payload, max_bytes=LIMIT))  # canonical container
    assert decoded.keys() == update.keys()
    for name, ref in update.items():
        assert decoded[name].shape == ref.shape and decoded[name].dtype == ref.dtype
        assert bool(torch.isfinite(decoded[name]).all())
    assert torch.equal(decoded["empty"], update["empty"])
    if type(codec) in (NoCodec, Quantize):
        assert torch.equal(decoded["const"], update["const"])  # a constant chunk decodes exactly


def test_none_is_exact_and_is_update_to_bytes():
    update = _update()
    payload, decoded = _roundtrip(NoCodec(), update)
    assert payload == update_to_bytes(update)
    assert all(torch.equal(decoded[k], update[k]) for k in update)


@pytest.mark.parametrize("bits", [8, 4, 2, 1])
@pytest.mark.parametrize("rotate", [False, True])
def test_quantization_error_is_below_one_step_per_coordinate(bits, rotate):
    chunk = 64
    x = torch.randn(1000, generator=_gen(2), dtype=torch.float64) * 3 + 1
    codec = (RotateQuantize if rotate else Quantize)(bits, chunk)
    payload, decoded = _roundtrip(codec, {"x": x})
    entries = update_from_bytes(payload, max_bytes=LIMIT)
    lo, hi = entries["x/min"].double(), entries["x/max"].double()
    step = ((hi - lo) / (2**bits - 1)).repeat_interleave(chunk)
    if rotate:
        # The bound holds in the rotated domain. Decoding against a template as long as the
        # rotation (1024, so nothing is truncated) and rotating again recovers the dequantized
        # coordinates; truncating the padding only shrinks the error (a projection).
        rotated = codec._forward("x", x, SEED)
        full = codec.decode(payload, {"x": torch.zeros(1024, dtype=torch.float64)}, seed=SEED, max_bytes=LIMIT)["x"]
        dequantized = codec._forward("x", full, SEED)
        assert bool(((dequantized - rotated).abs() <= step * (1 + 1e-9) + 1e-12).all())
        assert float((decoded["x"] - x).norm()) <= float((dequantized - rotated).norm()) * (1 + 1e-9)
    else:
        assert bool(((decoded["x"] - x).abs() <= step[: x.numel()] * (1 + 1e-9) + 1e-12).all())
        assert bool((lo.repeat_interleave(chunk)[:1000] <= x).all())
        assert bool((x <= hi.repeat_interleave(chunk)[:1000]).all())


@pytest.mark.parametrize("codec", [Quantize(2, 64), RotateQuantize(2, 64), Quantize(1, 64)], ids=lambda c: c.tag())
def test_stochastic_rounding_is_unbiased(codec):
    x = torch.randn(200, generator=_gen(3), dtype=torch.float64)
    runs = 400
    total, squared = torch.zeros_like(x), 0.0
    for i in range(runs):
        payload = codec.encode({"x": x}, seed=SEED, generator=_gen(100 + i))
        error = codec.decode(payload, {"x": x}, seed=SEED, max_bytes=LIMIT)["x"] - x
        total += error
        squared += float((error**2).sum())
    # Independent zero-mean errors: E|mean error|^2 = E|error|^2 / runs. A biased rounding
    # (say, to nearest) would leave |mean error|^2 near E|error|^2 instead.
    assert float(((total / runs) ** 2).sum()) < 2 * (squared / runs) / runs
    assert codec.encode({"x": x}, seed=SEED, generator=_gen(1)) != codec.encode({"x": x}, seed=SEED, generator=_gen(2))


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_rotation_beats_plain_quantization_on_an_outlier(bits):
    """Suresh et al. 2017: rotating first spreads an outlier, shrinking every chunk's range."""
    x = torch.randn(4096, generator=_gen(4), dtype=torch.float64) * 0.01
    x[1234] = 100.0
    mse = {}
    for codec in (Quantize(bits), RotateQuantize(bits)):
        _, decoded = _roundtrip(codec, {"x": x})
        mse[codec.name] = float(((decoded["x"] - x) ** 2).mean())
    assert mse["rotate_quantize"] * 10 < mse["quantize"]


def test_topk_keeps_the_largest_magnitudes_ties_by_index():
    x = torch.tensor([0.5, -3.0, 1.0, 3.0, -1.0, 0.0, 1.0, 2.0, -1.0, 0.25])
    payload, decoded = _roundtrip(TopK(0.5), {"x": x})  # k = 5
    entries = update_from_bytes(payload, max_bytes=LIMIT)
    assert entries["x/indices"].tolist() == [1, 2, 3, 4, 7] and entries["x/indices"].dtype == torch.int32
    assert decoded["x"].tolist() == [0, -3.0, 1.0, 3.0, -1.0, 0, 0, 2.0, 0, 0]
    assert TopK(1e-9).k(10) == 1 and TopK(0.01).k(150) == 2 and TopK(1.0).k(7) == 7 and TopK(0.5).k(0) == 0


# ---------------------------------------------------------------------------------------------
# The transform and determinism


@pytest.mark.parametrize("n", [1, 2, 8, 64, 128])
def test_fwht_is_the_orthonormal_sylvester_hadamard_and_its_own_inverse(n):
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    h = h / math.sqrt(n)
    matrix = fwht(torch.eye(n, dtype=torch.float64))  # rows transformed: H symmetric
    assert torch.allclose(matrix, h, atol=1e-15)
    assert torch.allclose(matrix @ matrix.T, torch.eye(n, dtype=torch.float64), atol=1e-13)
    x = torch.randn(3, n, generator=_gen(5), dtype=torch.float64)
    assert torch.allclose(fwht(fwht(x)), x, atol=1e-12)
    assert torch.allclose(fwht(x).norm(dim=1), x.norm(dim=1), rtol=1e-12)


@pytest.mark.parametrize("n", [0, 3, 12])
def test_fwht_refuses_non_power_of_two_lengths(n):
    with pytest.raises(ValueError):
        fwht(torch.zeros(n))


def test_rotation_layout_and_signs():
    assert [rotation_length(n) for n in (0, 1, 3, 1000, 1023, 1024, 1025, 100_000)] == [0, 1, 4, 1024, 1024, 1024, 1025, 100_352]
    assert rotation_length(1 << 20) == 1 << 20 and rotation_length(10**6) - 10**6 < 1024
    s = rotation_signs(SEED, "w", 4096)
    assert set(s.unique().tolist()) == {-1.0, 1.0} and abs(float(s.sum())) < 300
    assert torch.equal(s, rotation_signs(SEED, "w", 4096))
    assert not torch.equal(s, rotation_signs(SEED, "v", 4096))
    assert not torch.equal(s, rotation_signs(codec_seed(8, "ab" * 32), "w", 4096))


def _digest(tensors) -> str:
    return hashlib.sha256(update_to_bytes(tensors)).hexdigest()


@pytest.mark.parametrize("codec", [Quantize(8), RotateQuantize(4), TopK(0.05)], ids=lambda c: c.tag())
def test_encode_and_decode_are_bit_identical_across_thread_counts_and_calls(codec):
    update = {"big": torch.randn(70_000, generator=_gen(6)), "small": torch.randn(33, 3, generator=_gen(7)).double()}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        payload_1 = codec.encode(update, seed=SEED, generator=_gen(9))
        decoded_1 = _digest(codec.decode(payload_1, update, seed=SEED, max_bytes=LIMIT))
    finally:
        torch.set_num_threads(threads)
    payload = codec.encode(update, seed=SEED, generator=_gen(9))
    assert payload == payload_1
    assert _digest(codec.decode(payload, update, seed=SEED, max_bytes=LIMIT)) == decoded_1
    assert _digest(codec.decode(payload, update, seed=SEED, max_bytes=LIMIT)) == decoded_1


def test_rotate_quantize_decodes_to_a_known_answer():
    """A payload built by hand, independent of torch's random streams, pins the decoder (FWHT,
    signs, dequantization) so that a change in any of them shows up here."""
    template = {"w": torch.zeros(5, 2)}  # 10 elements, rotated as one piece of 16
    codes = torch.arange(16, dtype=torch.uint8) * 17  # 0, 17, ..., 255
    payload = update_to_bytes({"w/min": torch.tensor([-1.0]), "w/max": torch.tensor([1.5]), "w/codes": codes})
    decoded = RotateQuantize(8).decode(payload, template, seed=SEED, max_bytes=LIMIT)
    values = (torch.arange(16, dtype=torch.float64) * 17 * (2.5 / 255) - 1.0)
    expected = (fwht(values) * rotation_signs(SEED, "w", 16))[:10].reshape(5, 2).float()
    assert torch.equal(decoded["w"], expected)
    assert codec_seed(7, "ab" * 32).hex() == hashlib.sha256(
        b"torchchain/codec-seed/v1\x00" + (7).to_bytes(8, "big") + bytes.fromhex("ab" * 32)
    ).hexdigest()
    assert rotation_signs(SEED, "w", 16).tolist() == [
        1.0 - 2.0 * ((b >> i) & 1)
        for b in hashlib.shake_256(b"torchchain/codec-rotation/v1\x00" + SEED + (1).to_bytes(8, "big") + b"w").digest(2)
        for i in range(8)
    ]


# ---------------------------------------------------------------------------------------------
# Sizes


def test_encoded_sizes():
    x = {"w": torch.randn(100_000, generator=_gen(8))}
    raw = len(NoCodec().encode(x, seed=SEED, generator=_gen()))
    size = {c.tag(): len(c.encode(x, seed=SEED, generator=_gen())) for c in ALL_CODECS + [RotateQuantize(4)]}
    assert 3.9 < raw / size["quantize/8"] <= 4
    assert 7.8 < raw / size["quantize/4"] <= 8
    assert 15.4 < raw / size["quantize/2"] <= 16
    assert 3.9 < raw / size["rotate_quantize/8"] <= 4  # 100_000 rotates as 100_352 coordinates
    assert 7.7 < raw / size["rotate_quantize/4"] <= 8
    assert 45 < raw / size["topk/0.01"] <= 50  # 8 bytes per kept float32 coordinate


# ---------------------------------------------------------------------------------------------
# Tags and bounds


@pytest.mark.parametrize("codec", ALL_CODECS + [TopK(1e-5), Quantize(8, 1 << 20)], ids=lambda c: c.tag())
def test_tags_round_trip(codec):
    tag = codec.tag()
    assert 1 <= len(tag) <= 64 and all(0x21 <= ord(ch) <= 0x7E for ch in tag)
    assert codec_from_tag(tag) == codec and type(codec_from_tag(tag)) is type(codec)
    assert type(codec).parse_tag(tag) == codec
    assert CODECS[codec.name] is type(codec)
    assert json_safe(codec.hyperparameters())


def json_safe(value) -> bool:
    import json

    return json.loads(json.dumps(value)) == value


def test_tag_examples():
    assert [c.tag() for c in (NoCodec(), Quantize(8), RotateQuantize(4), TopK(0.01), Quantize(2, 256))] == [
        "none", "quantize/8", "rotate_quantize/4", "topk/0.01", "quantize/2/256",
    ]
    assert sorted(CODECS) == ["none", "quantize", "rotate_quantize", "topk"]


@pytest.mark.parametrize(
    "tag",
    [
        "", "None", "none/", "none/8", "quantize", "quantize/", "quantize/3", "quantize/08", "quantize/+8",
        "quantize/8/4096", "quantize/8/100", "quantize/8/32", "quantize/8/2097152", "quantize/8/ 64",
        "quantize/8/64/1", "quantize/٨", "rotate_quantize/16", "topk", "topk/0", "topk/0.0", "topk/1",
        "topk/1.5", "topk/nan", "topk/inf", "topk/.5", "topk/0.50", "topk/5e-1", "topk/-0.5", "topk/0.1/2",
        "gzip", "quantize/8 ", "x" * 65, 8, None, b"none",
    ],
)
def test_bad_tags_are_refused(tag):
    with pytest.raises(SerializationError):
        codec_from_tag(tag)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Quantize(3), lambda: Quantize(16), lambda: Quantize(0), lambda: Quantize(True),
        lambda: Quantize(8.0), lambda: Quantize(8, 32), lambda: Quantize(8, 100), lambda: Quantize(8, 1 << 21),
        lambda: Quantize(8, 64.0), lambda: RotateQuantize(5), lambda: RotateQuantize(4, 48),
        lambda: TopK(0), lambda: TopK(-0.1), lambda: TopK(1.01), lambda: TopK(math.nan),
        lambda: TopK(math.inf), lambda: TopK(True), lambda: TopK("0.1"), lambda: TopK(None),
    ],
)
def test_bad_arguments_are_refused_at_construction(make):
    with pytest.raises(ConfigError):
        make()


def test_codec_seed_bounds_and_bad_seeds():
    assert len(codec_seed(0, "00" * 32)) == 32 and codec_seed(1, "00" * 32) != codec_seed(0, "00" * 32)
    for args in [(-1, "00" * 32), (1 << 64, "00" * 32), (True, "00" * 32), (0, "AB" * 32), (0, "ab" * 31)]:
        with pytest.raises(ValueError):
            codec_seed(*args)
    for bad in [b"", b"x" * 31, "x" * 32, None]:
        with pytest.raises(ValueError):
            Quantize(8).encode({"x": torch.ones(3)}, seed=bad, generator=_gen())


def test_encode_refuses_non_finite_and_non_float_updates():
    for codec in ALL_CODECS[1:]:
        for bad in [{"x": torch.tensor([1.0, math.nan])}, {"x": torch.tensor([math.inf])}, {"x": torch.arange(3)}]:
            with pytest.raises(ValueError):
                codec.encode(bad, seed=SEED, generator=_gen())
    with pytest.raises(ValueError, match="float32 range"):
        Quantize(8).encode({"x": torch.tensor([1e300], dtype=torch.float64)}, seed=SEED, generator=_gen())


# ---------------------------------------------------------------------------------------------
# Hostile payloads


TEMPLATE = {"a": torch.zeros(150), "b": torch.zeros(3, 2).half()}


def _valid(codec: Codec) -> bytes:
    update = {"a": torch.randn(150, generator=_gen(11)), "b": torch.randn(3, 2, generator=_gen(12)).half()}
    return codec.encode(update, seed=SEED, generator=_gen(13))


def _edit(payload: bytes, **changes) -> bytes:
    entries = update_from_bytes(payload, max_bytes=LIMIT)
    for key, value in changes.items():
        key = key.replace("__", "/")
        if value is None:
            del entries[key]
        else:
            entries[key] = value
    return update_to_bytes(entries)


def _mutations(codec: Codec) -> list[tuple[str, bytes]]:
    p = _valid(codec)
    e = update_from_bytes(p, max_bytes=LIMIT)
    out = [
        ("truncated", p[:-1]),
        ("empty", b""),
        ("header only", p[:8]),
        ("trailing byte", p + b"\x00"),
        ("metadata", __import__("safetensors.torch", fromlist=["save"]).save(dict(e), metadata={"k": "v"})),
        ("extra entry", _edit(p, zzz=torch.zeros(1))),
        ("missing entry", _edit(p, **{next(iter(e)).replace("/", "__"): None})),
        ("renamed entry", update_to_bytes({("X" + k if i == 0 else k): v for i, (k, v) in enumerate(sorted(e.items()))})),
        ("other tensor's entries", update_to_bytes({("c" + k[1:] if k[0] == "a" else k): v for k, v in e.items()})),
    ]
    if isinstance(codec, NoCodec):
        out += [
            ("wrong dtype", _edit(p, a=torch.zeros(150, dtype=torch.float64))),
            ("wrong shape", _edit(p, b=torch.zeros(2, 3).half())),
            ("flattened", _edit(p, b=torch.zeros(6).half())),
            ("nan", _edit(p, a=torch.full((150,), math.nan))),
            ("inf", _edit(p, b=torch.full((3, 2), math.inf).half())),
            ("integer", _edit(p, a=torch.zeros(150, dtype=torch.int32))),
        ]
    elif isinstance(codec, Quantize):
        chunks = e["a/min"].numel()
        codes_len = e["a/codes"].numel()
        lo, hi = e["a/min"].clone(), e["a/max"].clone()
        nan_lo, inf_hi, swapped = lo.clone(), hi.clone(), lo.clone()
        nan_lo[0], inf_hi[-1], swapped[0] = math.nan, math.inf, hi[0] + 1
        out += [
            ("nan min", _edit(p, a__min=nan_lo)),
            ("inf max", _edit(p, a__max=inf_hi)),
            ("min > max", _edit(p, a__min=swapped)),
            ("min and max swapped", _edit(p, a__min=hi, a__max=lo)),
            ("min float64", _edit(p, a__min=lo.double())),
            ("max float16", _edit(p, a__max=hi.half())),
            ("codes int8", _edit(p, a__codes=e["a/codes"].to(torch.int8))),
            ("codes 2-D", _edit(p, a__codes=e["a/codes"].reshape(1, -1))),
            ("min 0-D", _edit(p, b__min=e["b/min"].reshape(()))),
            ("one chunk too many", _edit(p, a__min=torch.cat([lo, lo[:1]]), a__max=torch.cat([hi, hi[:1]]))),
            ("one chunk too few", _edit(p, a__min=lo[: chunks - 1], a__max=hi[: chunks - 1])),
            ("codes too long", _edit(p, a__codes=torch.cat([e["a/codes"], e["a/codes"][:1]]))),
            ("codes too short", _edit(p, a__codes=e["a/codes"][: codes_len - 1])),
            ("entries of a and b swapped", _edit(p, a__codes=e["b/codes"], b__codes=e["a/codes"])),
            ("overflow float16", _edit(p, b__min=torch.full_like(e["b/min"], -1e6), b__max=torch.full_like(e["b/max"], 1e6))),
        ]
        if codec.bits < 8:
            padded = e["b/codes"].clone()
            padded[-1] |= 0x80
            if (codec._coded_length(6) * codec.bits) % 8:  # b's codes leave the top bit unused
                out.append(("padding bits set", _edit(p, b__codes=padded)))
        const = _edit(p, a__min=hi.clone(), a__max=hi.clone(), a__codes=torch.full_like(e["a/codes"], 1))
        out.append(("codes in a constant chunk", const))
    else:
        idx, val = e["a/indices"], e["a/values"]
        k = idx.numel()
        out += [
            ("index out of range", _edit(p, a__indices=torch.cat([idx[:-1], torch.tensor([150], dtype=torch.int32)]))),
            ("negative index", _edit(p, a__indices=torch.cat([torch.tensor([-1], dtype=torch.int32), idx[1:]]))),
            ("huge index", _edit(p, a__indices=torch.cat([idx[:-1], torch.tensor([2**31 - 1], dtype=torch.int32)]))),
            ("int64 indices", _edit(p, a__indices=idx.long())),
            ("float indices", _edit(p, a__indices=idx.float())),
            ("one index too many", _edit(p, a__indices=torch.cat([idx, idx[-1:] + 1]), a__values=torch.cat([val, val[:1]]))),
            ("one index too few", _edit(p, a__indices=idx[:-1], a__values=val[:-1])),
            ("values float64", _edit(p, a__values=val.double())),
            ("values float16 for float32", _edit(p, a__values=val.half())),
            ("values length", _edit(p, a__values=val[:-1])),
            ("nan value", _edit(p, a__values=torch.cat([val[:-1], torch.tensor([math.nan])]))),
            ("inf value", _edit(p, b__values=torch.full_like(e["b/values"], math.inf))),
            ("indices and values swapped", _edit(p, a__indices=val, a__values=idx)),
        ]
        if k > 1:
            dup, rev = idx.clone(), idx.flip(0)
            dup[1] = dup[0]
            out += [("duplicate index", _edit(p, a__indices=dup)), ("descending indices", _edit(p, a__indices=rev))]
    return out


HOSTILE = [(codec, what, data) for codec in ALL_CODECS for what, data in _mutations(codec)]


@pytest.mark.parametrize(("codec", "what", "data"), HOSTILE, ids=[f"{c.tag()}-{w}" for c, w, _ in HOSTILE])
def test_hostile_payloads_raise_serialization_error(codec, what, data):
    with pytest.raises(SerializationError):
        codec.decode(data, TEMPLATE, seed=SEED, max_bytes=LIMIT)


@pytest.mark.parametrize("codec", ALL_CODECS, ids=lambda c: c.tag())
def test_payload_over_max_bytes_and_non_bytes_are_refused(codec):
    payload = _valid(codec)
    codec.decode(payload, TEMPLATE, seed=SEED, max_bytes=len(payload))
    with pytest.raises(SerializationError, match="over the limit"):
        codec.decode(payload, TEMPLATE, seed=SEED, max_bytes=len(payload) - 1)
    for bad in ["text", None, 3, [1, 2]]:
        with pytest.raises(SerializationError):
            codec.decode(bad, TEMPLATE, seed=SEED, max_bytes=LIMIT)


def test_a_payload_for_one_codec_is_refused_by_the_others():
    for producer in ALL_CODECS:
        payload = _valid(producer)
        for consumer in ALL_CODECS:
            if consumer == producer:
                continue
            try:
                consumer.decode(payload, TEMPLATE, seed=SEED, max_bytes=LIMIT)
            except SerializationError:
                continue
            # Only same-layout siblings may accept it (quantize vs rotate_quantize, bits that
            # pack the same lengths, topk fractions with the same k).
            assert type(consumer) in (type(producer), Quantize, RotateQuantize) or producer.tag() == consumer.tag()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, len(ALL_CODECS) - 1),
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 7)), min_size=1, max_size=4),
    cut=st.integers(0, 64),
)
def test_bit_flips_and_truncation_give_valid_tensors_or_serialization_error(index, flips, cut):
    codec = ALL_CODECS[index]
    data = bytearray(_valid(codec))
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    data = bytes(data[: len(data) - cut]) if cut % 3 == 0 else bytes(data)
    try:
        decoded = codec.decode(data, TEMPLATE, seed=SEED, max_bytes=LIMIT)
    except SerializationError:
        return
    assert decoded.keys() == TEMPLATE.keys()
    for name, ref in TEMPLATE.items():
        assert decoded[name].shape == ref.shape and decoded[name].dtype == ref.dtype
        assert bool(torch.isfinite(decoded[name]).all())


@settings(max_examples=100, deadline=None)
@given(junk=st.binary(max_size=300), header=st.dictionaries(st.text(max_size=8), st.just(0), max_size=3))
def test_random_bytes_give_serialization_error(junk, header):
    import json

    forged = json.dumps({k: {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for k in header}).encode()
    for data in (junk, struct.pack("<Q", len(forged)) + forged):
        for codec in ALL_CODECS:
            try:
                codec.decode(data, TEMPLATE, seed=SEED, max_bytes=LIMIT)
            except SerializationError:
                pass


# ---------------------------------------------------------------------------------------------
# Error feedback


def test_error_feedback_tracks_the_sum_of_true_updates():
    codec, g = TopK(0.05), _gen(20)
    residual, ef_norms = None, []
    total = torch.zeros(2000, dtype=torch.float64)
    sent_ef = torch.zeros(2000, dtype=torch.float64)
    sent_plain = torch.zeros(2000, dtype=torch.float64)
    for _ in range(60):
        update = {"w": torch.randn(2000, generator=g)}
        payload, residual = error_feedback_step(update, residual, codec, seed=SEED, generator=g)
        assert residual["w"].dtype == torch.float32 and residual["w"].shape == (2000,)
        sent_ef += codec.decode(payload, update, seed=SEED, max_bytes=LIMIT)["w"].double()
        plain = codec.encode(update, seed=SEED, generator=g)
        sent_plain += codec.decode(plain, update, seed=SEED, max_bytes=LIMIT)["w"].double()
        total += update["w"].double()
        ef_norms.append(float(residual["w"].norm()))
    # What was sent plus what is still owed is exactly what was produced (up to float32 rounding).
    assert torch.allclose(sent_ef + residual["w"].double(), total, atol=1e-4)
    update_norm = math.sqrt(2000)
    # The residual stays bounded (about sqrt(1/fraction) update norms), and levels off...
    assert max(ef_norms) < 2 * math.sqrt(1 / 0.05) * update_norm
    assert max(ef_norms[30:]) < 1.3 * max(ef_norms[10:30])
    # ...while plain top-k drifts away from the true sum.
    assert float((total - sent_ef).norm()) * 3 < float((total - sent_plain).norm())


def test_error_feedback_with_a_quantizer_and_bad_residuals():
    update = {"w": torch.randn(300, generator=_gen(21)), "b": torch.randn(4, generator=_gen(22)).double()}
    payload, residual = error_feedback_step(update, {}, RotateQuantize(2), seed=SEED, generator=_gen())
    sent = RotateQuantize(2).decode(payload, update, seed=SEED, max_bytes=LIMIT)
    for k in update:
        assert torch.allclose(sent[k].double() + residual[k].double(), update[k].double(), atol=1e-6)
        assert residual[k].dtype == update[k].dtype
    w, b = residual["w"], residual["b"]
    for bad in [{"w": w}, {"w": w.double(), "b": b}, {"w": w[:3], "b": b}]:
        with pytest.raises(ValueError):
            error_feedback_step(update, bad, RotateQuantize(2), seed=SEED, generator=_gen())
