"""Canonical bytes for tensors (DESIGN.md invariant 1) and strict parsing of peer bytes (invariant 2).

The format is safetensors: a JSON header with sorted names, dtypes, shapes and offsets, then
little-endian raw data. The same tensors always give the same bytes, so the SHA-256 of those
bytes identifies an update or a model. Parsing never unpickles: safetensors reads only the
header and the raw buffer, and :func:`update_from_bytes` checks the header's size first.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from torchchain.errors import SerializationError

__all__ = ["MAX_HEADER_BYTES", "update_from_bytes", "update_to_bytes"]

#: safetensors headers beyond this size are refused before they are parsed.
MAX_HEADER_BYTES = 1 << 20

_ALLOWED_DTYPES = {"F16", "BF16", "F32", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"}


def update_to_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """Serialize ``tensors`` to canonical safetensors bytes (CPU, contiguous, sorted names, no metadata)."""
    return _st_save({k: tensors[k].detach().cpu().contiguous() for k in sorted(tensors)})


def update_from_bytes(data: bytes, *, max_bytes: int) -> dict[str, torch.Tensor]:
    """Parse canonical safetensors bytes from an untrusted source.

    Args:
        data: The bytes as received.
        max_bytes: Refuse anything larger before parsing it.

    Returns:
        The tensors by name.

    Raises:
        SerializationError: if the bytes are too large, the header is malformed, declares an
            unsupported dtype, or the bytes are not in canonical form.
    """
    if len(data) > max_bytes:
        raise SerializationError(f"update is {len(data)} bytes, over the limit of {max_bytes}")
    if len(data) < 8:
        raise SerializationError("update is shorter than a safetensors header")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(MAX_HEADER_BYTES, len(data) - 8):
        raise SerializationError(f"safetensors header length {header_len} is out of bounds")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SerializationError(f"safetensors header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise SerializationError("safetensors header is not a JSON object")
    for name, entry in header.items():
        if name == "__metadata__":
            raise SerializationError("canonical updates carry no metadata")
        if not isinstance(entry, dict) or entry.get("dtype") not in _ALLOWED_DTYPES:
            raise SerializationError(f"tensor {name!r} has an unsupported or missing dtype")
    try:
        tensors = _st_load(data)
    except Exception as exc:  # safetensors raises its own error type for every malformed buffer
        raise SerializationError(f"malformed safetensors bytes: {exc}") from None
    if update_to_bytes(tensors) != data:
        raise SerializationError("update bytes are not in canonical form")
    return tensors
