"""Canonical bytes for tensors (DESIGN.md invariant 1) and strict parsing of peer bytes (invariant 2).

The format is safetensors: an 8-byte little-endian header length, a JSON header with sorted
names, dtypes, shapes and offsets, then little-endian raw data. The same tensors always give the
same bytes, so the SHA-256 of those bytes identifies an update or a model.

Parsing never unpickles. :func:`update_from_bytes` treats its input as hostile: it checks the
size, then the header against a strict schema (exact keys, known dtypes, non-negative integer
shapes, offsets that tile the data exactly), and only then hands the bytes to safetensors, so
that every malformed input raises :class:`~torchchain.errors.SerializationError` and nothing
else.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from torchchain.chain.encoding import parse_json_object
from torchchain.errors import SerializationError

__all__ = ["DTYPE_BYTES", "MAX_DIMS", "MAX_ELEMENTS", "MAX_HEADER_BYTES", "update_from_bytes", "update_to_bytes"]

#: safetensors headers beyond this size are refused before they are parsed.
MAX_HEADER_BYTES = 1 << 20

#: The most dimensions a tensor may declare.
MAX_DIMS = 16

#: The largest element count a shape may declare, zero dimensions counted as one. No real tensor
#: comes near it, and it keeps every size computation downstream far from 64-bit overflow.
MAX_ELEMENTS = 2**48

#: The safetensors dtypes an update or model may hold, with their size in bytes.
DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}

_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
# A safetensors header is {"name": {"dtype": ..., "shape": [...], "data_offsets": [...]}}.
_HEADER_DEPTH = 3


def update_to_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """Serialize ``tensors`` to canonical safetensors bytes (CPU, contiguous, sorted names, no metadata)."""
    return _st_save({k: tensors[k].detach().cpu().contiguous() for k in sorted(tensors)})


def _is_count(value: Any) -> bool:
    # type() rather than isinstance(): JSON true must not pass as 1.
    return type(value) is int and value >= 0


def _check_entry(name: str, entry: Any, data_bytes: int) -> tuple[int, int]:
    """Checks one tensor's header entry and returns its ``(begin, end)`` data offsets."""
    what = f"tensor {name[:80]!r}"
    if not isinstance(entry, dict) or entry.keys() != _ENTRY_KEYS:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise SerializationError(
            f"{what}: the header entry must have exactly the keys {sorted(_ENTRY_KEYS)}, got {keys}"
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise SerializationError(
            f"{what}: unsupported dtype {str(dtype)[:20]!r}; expected one of {sorted(DTYPE_BYTES)}"
        )
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_count(d) for d in shape):
        raise SerializationError(f"{what}: the shape must be a list of at most {MAX_DIMS} non-negative integers")
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        raise SerializationError(f"{what}: the shape declares more than {MAX_ELEMENTS} elements")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise SerializationError(f"{what}: data_offsets must be two non-negative integers")
    begin, end = offsets
    if not begin <= end <= data_bytes:
        raise SerializationError(
            f"{what}: data_offsets [{begin}, {end}] fall outside the {data_bytes}-byte data buffer"
        )
    needed = math.prod(shape) * DTYPE_BYTES[dtype]
    if end - begin != needed:
        raise SerializationError(
            f"{what}: data_offsets span {end - begin} bytes but {dtype} of this shape needs {needed}"
        )
    return begin, end


def _check_header(header: dict[str, Any], data: bytes, data_start: int) -> None:
    """Checks every entry and that the tensors' data tile the buffer: no gap, no overlap, no tail."""
    if "__metadata__" in header:
        raise SerializationError("canonical updates carry no metadata")
    data_bytes = len(data) - data_start
    spans = sorted(_check_entry(name, entry, data_bytes) + (name,) for name, entry in header.items())
    position = 0
    for begin, end, name in spans:
        if begin != position:
            raise SerializationError(
                f"tensor {name[:80]!r}: its data starts at byte {begin}, expected {position} (a gap or an overlap)"
            )
        if header[name]["dtype"] == "BOOL" and data[data_start + begin : data_start + end].translate(None, b"\x00\x01"):
            raise SerializationError(f"tensor {name[:80]!r}: a BOOL byte other than 0 or 1")
        position = end
    if position != data_bytes:
        raise SerializationError(f"{data_bytes - position} bytes after the last tensor's data")


def update_from_bytes(data: bytes, *, max_bytes: int) -> dict[str, torch.Tensor]:
    """Parse canonical safetensors bytes from an untrusted source.

    Every check on the header runs before safetensors sees the bytes, and any input that is not
    exactly what :func:`update_to_bytes` produces is refused, so a caller needs to handle
    :class:`~torchchain.errors.SerializationError` alone. Memory stays within a small multiple
    of ``len(data)``.

    Args:
        data: The bytes as received.
        max_bytes: Refuse anything larger before parsing it.

    Returns:
        The tensors by name.

    Raises:
        SerializationError: The input is not bytes, too large or too short; the header length is
            out of bounds; the header is not strict JSON (UTF-8, no duplicate keys, not nested
            deeper than a header is); an entry has other keys than dtype/shape/data_offsets, an
            unsupported dtype, a shape that is not a list of at most :data:`MAX_DIMS`
            non-negative integers or declares over :data:`MAX_ELEMENTS` elements, or
            offsets that do not match dtype size times element count; the tensors' data leave a
            gap, overlap or a tail; a BOOL byte is not 0 or 1; metadata is present; or the bytes
            are not in canonical form.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SerializationError(f"an update is bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise SerializationError(f"update is {len(data)} bytes, over the limit of {max_bytes}")
    if len(data) < 8:
        raise SerializationError("update is shorter than a safetensors header")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(MAX_HEADER_BYTES, len(data) - 8):
        raise SerializationError(f"safetensors header length {header_len} is out of bounds")
    data_start = 8 + header_len
    header = parse_json_object(
        data[8:data_start], what="safetensors header", max_bytes=MAX_HEADER_BYTES, max_depth=_HEADER_DEPTH
    )
    _check_header(header, data, data_start)
    try:
        tensors = _st_load(data)
        canonical = update_to_bytes(tensors)
    except Exception as exc:  # safetensors raises its own error type for every malformed buffer
        raise SerializationError(f"malformed safetensors bytes: {exc}") from None
    if canonical != data:
        raise SerializationError("update bytes are not in canonical form")
    return tensors
