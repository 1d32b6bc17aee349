"""A peer's bundle of submissions: exact round trip, every length bounded before it is used."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from torchchain.chain.block import Transaction
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.errors import SerializationError
from torchchain.protocol.bundle import BUNDLE_MAGIC, MAX_TX_BYTES, bundle_bound, decode_submissions, encode_submissions
from torchchain.protocol.submission import Submission

KEY = SigningKey.from_seed_material("bundle-test/client")


def _submission(payload: bytes, round: int = 1) -> Submission:
    tx = Transaction(client=KEY.public_key, round=round, base_hash="ab" * 32, update_hash=sha256_hex(payload), num_samples=3)
    return Submission(transaction=tx.signed(KEY), payload=payload)


def _decode(data: bytes, entries: int = 4, payload: int = 1 << 16) -> list[Submission]:
    return decode_submissions(data, max_entries=entries, max_payload_bytes=payload, what="bundle of rank 1")


def test_round_trip_is_exact_in_order():
    subs = [_submission(b"first"), _submission(b""), _submission(bytes(range(256)) * 4, round=2)]
    data = encode_submissions(subs)
    assert _decode(data) == subs
    assert len(data) <= bundle_bound(3, 1024)
    assert _decode(encode_submissions([])) == []


def _header(count: int) -> bytes:
    return BUNDLE_MAGIC + count.to_bytes(4, "big")


def test_hostile_bundles_are_refused_naming_the_sender():
    good = encode_submissions([_submission(b"payload")])
    tx = json.dumps(_submission(b"payload").transaction.to_dict()).encode()  # valid JSON, not canonical
    cases = [
        (b"", "magic"),
        (b"not a bundle at all, no", "magic"),
        (good[:-1], "payload runs past the end"),
        (good + b"\x00", "1 bytes follow the last entry"),
        (_header(5), "5 submissions, more than the 4"),
        (_header(1) + (MAX_TX_BYTES + 1).to_bytes(4, "big"), "transaction is 4097 bytes"),
        (_header(1) + len(tx).to_bytes(4, "big") + tx + (0).to_bytes(8, "big"), "not in canonical form"),
        (_header(1) + (2).to_bytes(4, "big") + b"[]", "expected a JSON object"),
        (_header(1) + (2).to_bytes(4, "big") + b"{}", "missing keys"),
    ]
    for data, match in cases:
        with pytest.raises(SerializationError, match=match) as info:
            _decode(data)
        assert str(info.value).startswith("bundle of rank 1")


def test_a_huge_payload_length_is_refused_before_anything_is_allocated():
    data = encode_submissions([_submission(b"x")])
    cut = data.rindex(b"x") - 8
    lying = data[:cut] + (100 << 30).to_bytes(8, "big") + b"x"
    tracemalloc.start()
    try:
        with pytest.raises(SerializationError, match=f"payload is {100 << 30} bytes, over 65536"):
            _decode(lying)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
