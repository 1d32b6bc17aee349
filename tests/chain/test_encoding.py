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
