from __future__ import annotations

import pytest

from torchchain.chain.encoding import canonical_json, parse_json_object
from torchchain.errors import SerializationError


def test_canonical_json_sorts_keys_and_drops_whitespace() -> None:
    assert canonical_json({"b": [1, 2.5, None], "a": {"d": True, "c": "x"}}) == (
        b'{"a":{"c":"x","d":true},"b":[1,2.5,null]}'
    )


def test_canonical_json_escapes_non_ascii() -> None:
    assert canonical_json({"name": "caf\u00e9"}) == b'{"name":"caf\\u00e9"}'


def test_canonical_json_is_independent_of_insertion_order() -> None:
    assert canonical_json({"x": 1, "y": 2}) == canonical_json({"y": 2, "x": 1})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), object(), {1: "a", "b": 2}])
def test_canonical_json_refuses_what_json_cannot_hold(value: object) -> None:
    with pytest.raises(SerializationError):
        canonical_json({"v": value})


def test_parse_json_object_round_trips_canonical_json() -> None:
    obj = {"a": [1, 2, {"b": None}], "c": "d", "e": 1.5}
    assert parse_json_object(canonical_json(obj), what="record", max_bytes=1000) == obj


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"x" * 201, "over the limit"),
        (b'{"a": "\xff"}', "UTF-8"),
        (b"[1, 2]", "JSON object"),
        (b'"text"', "JSON object"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": Infinity}', "Infinity"),
        (b'{"a": -Infinity}', "Infinity"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"o": {"k": 1, "k": 1}}', "duplicate key 'k'"),
        (b'{"a": 1', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[" * 100 + b"]" * 100, "JSON object"),
    ],
)
def test_parse_json_object_rejects_with_the_name_of_the_input(data: bytes, message: str) -> None:
    with pytest.raises(SerializationError, match=message) as info:
        parse_json_object(data, what="peer-record.json", max_bytes=200)
    assert str(info.value).startswith("peer-record.json:")


def test_parse_json_object_checks_the_size_before_parsing() -> None:
    # Invalid JSON over the limit must fail on the size, proving no parse was attempted.
    with pytest.raises(SerializationError, match="over the limit"):
        parse_json_object(b"{" * 50, what="x", max_bytes=10)


def test_parse_json_object_refuses_absurd_nesting() -> None:
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    with pytest.raises(SerializationError, match="deep.json"):
        parse_json_object(deep, what="deep.json", max_bytes=10**6)


def test_check_nesting_counts_arrays_and_objects_without_recursion() -> None:
    from torchchain.chain.encoding import check_nesting

    check_nesting({"a": [1, {"b": []}]}, what="x", max_depth=4)
    check_nesting("scalar", what="x", max_depth=0)
    with pytest.raises(SerializationError, match="x: arrays and objects nest deeper than 3"):
        check_nesting({"a": [1, {"b": []}]}, what="x", max_depth=3)
    deep: list[object] = []
    for _ in range(100_000):  # far beyond the recursion limit
        deep = [deep]
    with pytest.raises(SerializationError, match="deeper than 64"):
        check_nesting(deep, what="x", max_depth=64)


def test_parse_json_object_refuses_nesting_beyond_its_limit() -> None:
    from torchchain.chain.encoding import MAX_JSON_DEPTH

    ok = b'{"a":' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
    assert parse_json_object(ok, what="r", max_bytes=1000)
    too_deep = b'{"a":' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}"
    with pytest.raises(SerializationError, match="r: arrays and objects nest deeper than 64"):
        parse_json_object(too_deep, what="r", max_bytes=1000)
    with pytest.raises(SerializationError, match="deeper than 2"):
        parse_json_object(b'{"a":{"b":{}}}', what="r", max_bytes=1000, max_depth=2)


@pytest.mark.parametrize("number", [b"1e999", b"-1e400", b"1" * 400 + b".0"])
def test_parse_json_object_refuses_numbers_that_overflow_a_float(number: bytes) -> None:
    with pytest.raises(SerializationError, match="too large for a float"):
        parse_json_object(b'{"a":' + number + b"}", what="r", max_bytes=1000)


def test_canonical_json_refuses_an_object_too_deep_to_encode() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(SerializationError, match="cannot encode"):
        canonical_json({"a": deep})
