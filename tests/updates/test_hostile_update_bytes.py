"""Hostile update bytes: ``update_from_bytes`` either returns tensors whose canonical bytes are
exactly its input, or raises :class:`SerializationError`; never another exception.

Valid inputs are drawn as real tensors of every allowed dtype; the mutations cover bit flips,
truncation, edited header JSON (inserted fields, wrong types, huge values, duplicated keys,
deep nesting, overlapping or reordered data), forged header lengths, and random headers.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from torchchain.errors import SerializationError
from torchchain.updates.serialize import DTYPE_BYTES, update_from_bytes, update_to_bytes

# Examples per property; TORCHCHAIN_FUZZ_EXAMPLES=2000 runs a thorough search (a few minutes).
EXAMPLES = int(os.environ.get("TORCHCHAIN_FUZZ_EXAMPLES", "150"))
LIMIT = 1 << 20

DTYPES = [
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
]


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    numel = 1
    for d in shape:
        numel *= d
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    raw = bytearray(draw(st.binary(min_size=numel * dtype.itemsize, max_size=numel * dtype.itemsize)))
    if dtype == torch.bool:
        raw = bytearray(b & 1 for b in raw)
    return torch.frombuffer(raw, dtype=dtype).reshape(shape).clone()


updates = st.dictionaries(st.text(min_size=1, max_size=6), tensors(), max_size=4)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
extreme_values = st.sampled_from(
    [-1, 2**63, 2**64 + 8, 10**4000, 1.5, True, None, "F32", [], [2**64], [0, 2**70], [-8, 8], [[1]], {}]
)


def _assert_strict(data: bytes) -> None:
    """The property: refused with SerializationError, or parsed exactly."""
    try:
        parsed = update_from_bytes(data, max_bytes=LIMIT)
    except SerializationError:
        return
    assert update_to_bytes(parsed) == data


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (header_len,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + header_len]), data[8 + header_len :]


def _join(header: Any, body: bytes, *, pad: bool = True, raw: bytes | None = None) -> bytes:
    text = raw if raw is not None else json.dumps(header, separators=(",", ":")).encode()
    if pad:  # safetensors pads its header with spaces to a multiple of 8
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


@settings(max_examples=EXAMPLES, deadline=None)
@given(update=updates)
def test_valid_updates_round_trip_exactly(update: dict[str, torch.Tensor]) -> None:
    data = update_to_bytes(update)
    back = update_from_bytes(data, max_bytes=len(data))
    assert sorted(back) == sorted(update)
    for name, tensor in update.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
    assert update_to_bytes(back) == data


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    update=updates,
    flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 7)), min_size=1, max_size=6),
    in_header=st.booleans(),
)
def test_bit_flips(update: dict[str, torch.Tensor], flips: list[tuple[int, int]], in_header: bool) -> None:
    data = bytearray(update_to_bytes(update))
    # Half the flips land in the length field and header, where the parsing happens.
    span = 8 + struct.unpack("<Q", data[:8])[0] if in_header else len(data)
    for position, bit in flips:
        data[position % span] ^= 1 << bit
    _assert_strict(bytes(data))


@settings(max_examples=EXAMPLES, deadline=None)
@given(update=updates, keep=st.integers(0, 1 << 16), tail=st.binary(max_size=16))
def test_truncation_extension_and_replaced_tails(update: dict[str, torch.Tensor], keep: int, tail: bytes) -> None:
    data = update_to_bytes(update)
    cut = keep % len(data)
    with pytest.raises(SerializationError):
        update_from_bytes(data[:cut], max_bytes=LIMIT)
    if tail:
        with pytest.raises(SerializationError):
            update_from_bytes(data + tail, max_bytes=LIMIT)
    # Replacing the end may well give another valid update (new tensor values): strict, not refused.
    _assert_strict(data[:cut] + tail)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    update=updates.filter(bool),
    where=st.integers(0, 100),
    field=st.sampled_from(["dtype", "shape", "data_offsets", "extra", "__metadata__"]),
    value=json_values | extreme_values,
    pad=st.booleans(),
)
def test_edited_header_fields(
    update: dict[str, torch.Tensor], where: int, field: str, value: Any, pad: bool
) -> None:
    header, body = _split(update_to_bytes(update))
    if field == "__metadata__":
        header["__metadata__"] = value
    else:
        header[sorted(header)[where % len(header)]][field] = value
    _assert_strict(_join(header, body, pad=pad))


@settings(max_examples=EXAMPLES, deadline=None)
@given(update=updates.filter(lambda u: len(u) >= 2), where=st.integers(0, 100))
def test_overlapping_reordered_and_duplicated_tensors(update: dict[str, torch.Tensor], where: int) -> None:
    header, body = _split(update_to_bytes(update))
    names = sorted(header)
    a, b = names[where % len(names)], names[(where + 1) % len(names)]
    swapped = dict(header)
    swapped[a], swapped[b] = dict(header[a], data_offsets=header[b]["data_offsets"]), dict(
        header[b], data_offsets=header[a]["data_offsets"]
    )
    _assert_strict(_join(swapped, body))
    overlapping = dict(header)
    overlapping[a] = dict(header[a], data_offsets=header[b]["data_offsets"])
    _assert_strict(_join(overlapping, body))
    # The same key twice: JSON parsers disagree on which one wins, so it must be refused.
    text = json.dumps(header, separators=(",", ":")).encode()
    entry = json.dumps({a: header[a]}, separators=(",", ":")).encode()[1:-1]
    with pytest.raises(SerializationError, match="duplicate key"):
        update_from_bytes(_join(None, body, raw=text[:-1] + b"," + entry + b"}"), max_bytes=LIMIT)


@settings(max_examples=EXAMPLES, deadline=None)
@given(update=updates, header_len=st.integers(0, 2**64 - 1) | st.sampled_from([2**64 - 1, 2**63, LIMIT, 7, 9]))
def test_forged_header_lengths(update: dict[str, torch.Tensor], header_len: int) -> None:
    data = update_to_bytes(update)
    forged = struct.pack("<Q", header_len) + data[8:]
    assume(forged != data)
    with pytest.raises(SerializationError):
        update_from_bytes(forged, max_bytes=LIMIT)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    entries=st.dictionaries(
        st.text(max_size=4),
        st.fixed_dictionaries(
            {
                "dtype": st.sampled_from([*DTYPE_BYTES, "F8", "U64", "OBJ", ""]),
                "shape": st.lists(st.integers(-2, 2**64), max_size=4) | extreme_values,
                "data_offsets": st.lists(st.integers(-2, 2**64), min_size=0, max_size=3) | extreme_values,
            }
        ),
        max_size=3,
    ),
    body=st.binary(max_size=64),
    pad=st.booleans(),
)
def test_random_headers(entries: dict[str, Any], body: bytes, pad: bool) -> None:
    _assert_strict(_join(entries, body, pad=pad))


@pytest.mark.parametrize("depth", [3, 4, 100, 990, 100_000])
def test_deeply_nested_headers(depth: int) -> None:
    # Before the fix, 100_000 levels raised RecursionError instead of SerializationError.
    header = b'{"w":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(SerializationError):
        update_from_bytes(_join(None, b"", raw=header), max_bytes=LIMIT)


@pytest.mark.parametrize("number", [b"9" * 5000, b"1e999", b"-1e999", b"1" * 400 + b".5"])
def test_numbers_no_parser_can_hold_are_refused(number: bytes) -> None:
    # Before the fix, an integer of over 4300 digits raised a bare ValueError.
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,' + number + b"]}}"
    with pytest.raises(SerializationError):
        update_from_bytes(_join(None, b"\x00" * 4, raw=header), max_bytes=LIMIT)


@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.binary(max_size=256))
def test_arbitrary_bytes(data: bytes) -> None:
    _assert_strict(data)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}, "exactly the keys"),
        ({"dtype": "F32", "shape": [2]}, "exactly the keys"),
        ({"dtype": "F8", "shape": [2], "data_offsets": [0, 8]}, "unsupported dtype"),
        ({"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}, "non-negative integers"),
        ({"dtype": "F32", "shape": [-1, -2], "data_offsets": [0, 8]}, "non-negative integers"),
        ({"dtype": "F32", "shape": [1] * 17, "data_offsets": [0, 4]}, "at most 16"),
        ({"dtype": "F32", "shape": [0, 2**60], "data_offsets": [0, 0]}, "more than"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 2**70]}, "outside"),
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "needs 12"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}, "starts at byte 4"),
    ],
)
def test_each_schema_rule_is_named(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        update_from_bytes(_join({"w": entry}, b"\x00" * 8), max_bytes=LIMIT)


def test_a_bool_byte_other_than_zero_or_one_is_refused() -> None:
    data = bytearray(update_to_bytes({"mask": torch.tensor([True, False, True])}))
    data[-2] = 2
    with pytest.raises(SerializationError, match="BOOL byte"):
        update_from_bytes(bytes(data), max_bytes=LIMIT)


def test_trailing_bytes_after_the_last_tensor_are_refused() -> None:
    header, body = _split(update_to_bytes({"w": torch.ones(2)}))
    with pytest.raises(SerializationError, match="4 bytes after the last tensor"):
        update_from_bytes(_join(header, body + b"\x00" * 4), max_bytes=LIMIT)


def test_only_bytes_are_accepted() -> None:
    with pytest.raises(SerializationError, match="bytes"):
        update_from_bytes("not bytes", max_bytes=LIMIT)  # type: ignore[arg-type]
    assert update_from_bytes(memoryview(update_to_bytes({"w": torch.ones(1)})), max_bytes=LIMIT)["w"].item() == 1.0
