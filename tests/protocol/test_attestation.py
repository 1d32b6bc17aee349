"""Attestations: strict bytes, signatures bound to the peer, and a majority counted once per peer."""

from __future__ import annotations

import dataclasses
import json

import pytest

from torchchain.chain.block import ZERO_HASH
from torchchain.chain.crypto import SigningKey
from torchchain.chain.encoding import canonical_json
from torchchain.errors import SerializationError
from torchchain.protocol.attestation import (
    ATTESTATION_DOMAIN,
    MAX_ATTESTATION_BYTES,
    MAX_REASON_CHARS,
    Attestation,
    clip_reason,
    committed,
    count_attestations,
    decode_attestation_set,
    encode_attestation_set,
)

KEYS = [SigningKey.from_seed_material(f"attestation-test/peer/{i}") for i in range(4)]
PEERS = [k.public_key for k in KEYS]
OUTSIDER = SigningKey.from_seed_material("attestation-test/outsider")
BLOCK = "ab" * 32
OTHER = "cd" * 32


def _attest(i: int, verdict: str = "accept", block: str = BLOCK, reason: str = "", key=None) -> Attestation:
    key = KEYS[i] if key is None else key
    return Attestation(peer=key.public_key, height=3, block_hash=block, verdict=verdict, reason=reason).signed(key)


def test_round_trip_is_exact_and_canonical():
    a = _attest(0, "reject", reason='bad "model" \\ here')
    data = a.to_bytes()
    assert Attestation.from_bytes(data) == a
    assert len(data) < MAX_ATTESTATION_BYTES
    longest = _attest(1, "reject", reason='"' * MAX_REASON_CHARS)
    assert len(longest.to_bytes()) <= MAX_ATTESTATION_BYTES
    assert Attestation.from_bytes(longest.to_bytes()) == longest


def test_signature_is_domain_separated_and_bound_to_every_field():
    a = _attest(0)
    assert a.signing_payload().startswith(ATTESTATION_DOMAIN)
    for change in ({"verdict": "reject", "reason": "x"}, {"height": 4}, {"block_hash": OTHER}, {"peer": PEERS[1]}):
        forged = dataclasses.replace(a, **change)
        with pytest.raises(SerializationError, match="signature does not match"):
            Attestation.from_bytes(forged.to_bytes())
    # A signature over the bare JSON (no domain tag) is not an attestation signature.
    bare = dataclasses.replace(a, signature=KEYS[0].sign(canonical_json({k: v for k, v in a.to_dict().items() if k != "signature"})))
    with pytest.raises(SerializationError, match="signature"):
        Attestation.from_bytes(bare.to_bytes())


def test_signing_with_another_key_is_refused():
    with pytest.raises(ValueError, match="cannot sign"):
        Attestation(peer=PEERS[0], height=1, block_hash=BLOCK, verdict="accept").signed(KEYS[1])


def _mutated(**fields) -> bytes:
    d = _attest(0).to_dict()
    d.update(fields)
    return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b"\xff\xfe", "UTF-8"),
        (b"x" * (MAX_ATTESTATION_BYTES + 1), "over the limit"),
        (b'{"a":1,"a":2}', "duplicate key"),
        (b'{"height":NaN}', "NaN"),
        (_mutated(extra=1), "unknown keys"),
        (_mutated(height=True), "height"),
        (_mutated(height=-1), "height"),
        (_mutated(height=2**63), "height"),
        (_mutated(height=3.0), "height"),
        (_mutated(verdict="maybe"), "verdict"),
        (_mutated(verdict=["accept"]), "verdict"),
        (_mutated(peer=PEERS[0].upper()), "peer"),
        (_mutated(block_hash=BLOCK[:-1]), "block_hash"),
        (_mutated(signature="00"), "signature"),
        (_mutated(signature=""), "signature does not match"),
        (_mutated(reason="x" * (MAX_REASON_CHARS + 1)), "reason"),
        (_mutated(reason="tab\there"), "reason"),
        (_mutated(reason="caf\u00e9"), "reason"),
        (_mutated(reason="an accept with a reason"), "no reason"),
        (_mutated(block_hash=ZERO_HASH), "zero hash"),
    ],
)
def test_hostile_attestation_bytes_are_refused(data, match):
    with pytest.raises(SerializationError, match=match):
        Attestation.from_bytes(data)


def test_non_canonical_bytes_are_refused():
    a = _attest(0)
    spaced = json.dumps(a.to_dict(), sort_keys=True).encode()  # valid JSON, same fields, other bytes
    with pytest.raises(SerializationError, match="canonical"):
        Attestation.from_bytes(spaced)


def test_clip_reason_makes_any_text_an_attestation_reason():
    reason = clip_reason("client 3\u2026 sent \u00e9\n" + "y" * 500)
    assert len(reason) == MAX_REASON_CHARS and reason.endswith("...")
    assert "client 3... sent ??" in reason
    Attestation(peer=PEERS[0], height=1, block_hash=BLOCK, verdict="reject", reason=reason)


def test_count_is_one_vote_per_genesis_peer():
    votes = [_attest(0), _attest(0), _attest(1), _attest(2, "reject", reason="no"), _attest(3, block=OTHER)]
    votes.append(_attest(0, key=OUTSIDER))
    tally = count_attestations(votes, PEERS, BLOCK)
    assert (tally.accepts, tally.rejects) == (2, 1)
    assert tally.accepted_by == tuple(sorted(PEERS[:2]))
    reasons = dict(tally.invalid)
    assert "attests block" in reasons[PEERS[3]]
    assert "not a peer" in reasons[OUTSIDER.public_key]
    assert not committed(tally, 4)  # 2 of 4 is no strict majority
    assert committed(tally, 3)


def test_a_peer_signing_both_verdicts_counts_for_neither():
    votes = [_attest(0), _attest(0, "reject", reason="changed my mind"), _attest(1), _attest(2)]
    tally = count_attestations(votes, PEERS[:3], BLOCK)
    assert (tally.accepts, tally.rejects) == (2, 0)
    assert [p for p, _ in tally.invalid] == [PEERS[0]] and "equivocation" in tally.invalid[0][1]


def test_attestation_set_round_trip_and_hostile_sets():
    votes = [_attest(2), _attest(0), _attest(1, "reject", reason="late")]
    data = encode_attestation_set(BLOCK, votes)
    parsed = decode_attestation_set(data, block_hash=BLOCK, height=3, max_bytes=1 << 16)
    assert [a.peer for a in parsed] == sorted(PEERS[:3])
    with pytest.raises(SerializationError, match="height"):
        decode_attestation_set(data, block_hash=BLOCK, height=4, max_bytes=1 << 16)
    with pytest.raises(SerializationError, match="names block"):
        decode_attestation_set(data, block_hash=OTHER, height=3, max_bytes=1 << 16)
    with pytest.raises(SerializationError, match="over the limit"):
        decode_attestation_set(data, block_hash=BLOCK, height=3, max_bytes=len(data) - 1)
    d = json.loads(data)
    d["attestations"].append(d["attestations"][0])
    with pytest.raises(SerializationError, match="one attestation per peer"):
        decode_attestation_set(canonical_json(d), block_hash=BLOCK, height=3, max_bytes=1 << 16)
    d = json.loads(data)
    d["attestations"].reverse()
    with pytest.raises(SerializationError, match="canonical"):
        decode_attestation_set(canonical_json(d), block_hash=BLOCK, height=3, max_bytes=1 << 16)
    d = json.loads(data)
    d["attestations"][0]["signature"] = "0" * 128
    with pytest.raises(SerializationError, match="entry 0: signature does not match"):
        decode_attestation_set(canonical_json(d), block_hash=BLOCK, height=3, max_bytes=1 << 16)
    with pytest.raises(SerializationError, match="not a signed attestation"):
        encode_attestation_set(BLOCK, [_attest(0, block=OTHER)])
