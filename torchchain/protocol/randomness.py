"""Round randomness that nobody knows before the round's submissions are fixed.

Bucketing's permutation, and any other random choice a strategy makes, must not be known to a
client while it can still choose its update: otherwise an attacker places its rows where the
permutation helps it. The seed of a round is therefore derived from chain data that is fixed
only once the round's accepted submissions are: the hash of the chain's configuration, the round
number and, in client-key order, each accepted client's key and update hash (Bonneau, Clark and
Goldfeder 2015, "On Bitcoin as a public randomness source", use block data the same way). Every
node derives the same seed from the block, so the aggregation stays replayable.

What the seed leaves out is as deliberate: the parent block's hash, the block's time and its
nonce. They change with the wall clock, so a seed that included them would make two runs of one
``seed`` aggregate differently (DESIGN.md invariant 6: one seed, the same ledger up to
timestamps), and the miner of the parent could grind its nonce to steer the seed. The updates
themselves are computed against the parent's model, so the seed still differs between branches
whose updates differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch

__all__ = ["RANDOMNESS_DOMAIN", "round_generator", "round_randomness"]

RANDOMNESS_DOMAIN = b"torchchain/round-randomness/v2\x00"


def _digest(value: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{what} must be 64 hex characters")
    return raw


def round_randomness(config_hash: str, round: int, accepted: Iterable[tuple[str, str]]) -> str:  # noqa: A002 - the protocol's word
    """The round's seed, 64 hex characters: SHA-256 of a domain tag, the chain's config hash, the
    round (8 bytes, big-endian) and each accepted ``(client key, update hash)`` in the order given
    (client-key order, the order of the block's transactions), all as raw 32-byte digests.

    Raises:
        ValueError: A hash or key is not 64 hex characters, or the round is not in ``[0, 2^63)``.
    """
    if type(round) is not int or not 0 <= round < 2**63:
        raise ValueError(f"round must be an int in [0, 2^63), got {round!r}")
    material = bytearray(RANDOMNESS_DOMAIN + _digest(config_hash, "config_hash") + round.to_bytes(8, "big"))
    for client, update_hash in accepted:
        material += _digest(client, "a client key") + _digest(update_hash, "an update hash")
    return hashlib.sha256(material).hexdigest()


def round_generator(randomness: str) -> torch.Generator:
    """A CPU generator seeded with the first 63 bits of the round's :func:`round_randomness`."""
    return torch.Generator().manual_seed(int(randomness[:16], 16) >> 1)
