"""Canonical JSON: the one byte encoding that every hash and signature in the chain covers.

Two nodes that hold the same record must produce the same bytes, or their hashes disagree.
:func:`canonical_json` fixes every free choice of :func:`json.dumps` (key order, separators,
escaping, no NaN); :func:`parse_json_object` is its strict counterpart for bytes that come from
a peer or from disk: it refuses anything a sloppy parser would silently accept.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from torchchain.errors import SerializationError

__all__ = ["canonical_json", "parse_json_object"]


def canonical_json(obj: Any) -> bytes:
    """Encodes ``obj`` as canonical JSON bytes.

    Keys are sorted, there is no whitespace, every non-ASCII character is escaped and NaN or
    infinite floats are refused, so equal objects always give byte-identical output.

    Args:
        obj: A JSON-able value (dicts with string keys, lists, str, int, finite float, bool, None).

    Returns:
        The ASCII bytes of the encoding.

    Raises:
        SerializationError: ``obj`` holds a value JSON cannot represent (NaN, infinity, a
            non-JSON type, keys that cannot be sorted).
    """
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"cannot encode as canonical JSON: {exc}") from None
    return text.encode("ascii")


def parse_json_object(data: bytes, *, what: str, max_bytes: int) -> dict[str, Any]:
    """Parses bytes that must hold one JSON object, strictly.

    The size limit is checked before any parsing, so an oversized input costs nothing.

    Args:
        data: The raw bytes (UTF-8).
        what: A name for the input (a file name, "transaction from client 3"), used in errors.
        max_bytes: The largest accepted input, in bytes.

    Returns:
        The parsed object; nested objects are plain dicts, arrays are lists.

    Raises:
        SerializationError: The input is too large, not UTF-8, not JSON, not an object at the top
            level, holds ``NaN``/``Infinity`` or a duplicate key. The message starts with ``what``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SerializationError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise SerializationError(f"{what}: {len(data)} bytes is over the limit of {max_bytes} bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SerializationError(f"{what}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None

    def reject_constant(name: str) -> NoReturn:
        raise SerializationError(f"{what}: {name} is not allowed in JSON records")

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise SerializationError(f"{what}: duplicate key {key!r}")
            result[key] = value
        return result

    try:
        obj = json.loads(text, parse_constant=reject_constant, object_pairs_hook=unique_keys)
    except SerializationError:
        raise
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise SerializationError(f"{what}: not valid JSON ({exc.msg} at {where})") from None
    except (ValueError, RecursionError) as exc:
        # ValueError: an integer longer than Python's digit limit; RecursionError: absurd nesting.
        raise SerializationError(f"{what}: not acceptable JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise SerializationError(f"{what}: expected a JSON object at the top level, got {type(obj).__name__}")
    return obj
