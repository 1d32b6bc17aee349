"""Canonical JSON: the one byte encoding that every hash and signature in the chain covers.

Two nodes that hold the same record must produce the same bytes, or their hashes disagree.
:func:`canonical_json` fixes every free choice of :func:`json.dumps` (key order, separators,
escaping, no NaN); :func:`parse_json_object` is its strict counterpart for bytes that come from
a peer or from disk: it refuses anything a sloppy parser would silently accept.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from torchchain.errors import SerializationError

__all__ = ["MAX_JSON_DEPTH", "canonical_json", "check_nesting", "parse_json_object"]

MAX_JSON_DEPTH = 64
"""The deepest nesting of arrays and objects :func:`parse_json_object` accepts (the top-level
object counts as 1). Records are a few levels deep; the limit keeps every later recursive step
(encoding, comparing, copying) far from Python's recursion limit."""


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
            non-JSON type, keys that cannot be sorted) or nests too deep to encode.
    """
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(f"cannot encode as canonical JSON: {exc}") from None
    return text.encode("ascii")


def check_nesting(obj: Any, *, what: str, max_depth: int) -> None:
    """Checks that arrays and objects in ``obj`` nest at most ``max_depth`` deep.

    ``obj`` itself, if a list, tuple or dict, is at depth 1. The walk uses an explicit stack, so
    any depth is measured without recursion.

    Raises:
        SerializationError: The nesting is deeper than ``max_depth``; the message starts with
            ``what``.
    """
    stack = [(obj, 1)] if isinstance(obj, (dict, list, tuple)) else []
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        if depth > max_depth:
            raise SerializationError(f"{what}: arrays and objects nest deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))


def parse_json_object(
    data: bytes, *, what: str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH
) -> dict[str, Any]:
    """Parses bytes that must hold one JSON object, strictly.

    The size limit is checked before any parsing, so an oversized input costs nothing. Absurd
    nesting stops the decoder at Python's recursion limit; any nesting beyond ``max_depth`` is
    refused after parsing, before a caller can trip over it.

    Args:
        data: The raw bytes (UTF-8).
        what: A name for the input (a file name, "transaction from client 3"), used in errors.
        max_bytes: The largest accepted input, in bytes.
        max_depth: The deepest accepted nesting of arrays and objects (see :func:`check_nesting`).

    Returns:
        The parsed object; nested objects are plain dicts, arrays are lists.

    Raises:
        SerializationError: The input is too large, not UTF-8, not JSON, not an object at the top
            level, nested too deep, holds ``NaN``/``Infinity``, a number too large for a float or
            a duplicate key. The message starts with ``what``.
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

    def finite_float(text: str) -> float:
        # json turns 1e999 into inf, which no canonical record holds.
        value = float(text)
        if not math.isfinite(value):
            raise SerializationError(f"{what}: the number {text[:40]} is too large for a float")
        return value

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise SerializationError(f"{what}: duplicate key {key!r}")
            result[key] = value
        return result

    try:
        obj = json.loads(
            text, parse_constant=reject_constant, parse_float=finite_float, object_pairs_hook=unique_keys
        )
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
    check_nesting(obj, what=what, max_depth=max_depth)
    return obj
