"""Round randomness that nobody knows before the round's submissions are fixed.

Bucketing's permutation, and any other random choice a strategy makes, must not be known to a
client while it can still choose its update: otherwise an attacker places its rows where the
permutation helps it. The seed of a round is therefore derived from chain data that is fixed
only once the round's accepted submissions are: the parent block's hash and the Merkle root of
the accepted transactions (Bonneau, Clark and Goldfeder 2015, "On Bitcoin as a public
randomness source", use block data the same way). Every node derives the same seed from the
block, so the aggregation stays replayable.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["RANDOMNESS_DOMAIN", "round_generator", "round_randomness"]

RANDOMNESS_DOMAIN = b"torchchain/round-randomness/v1\x00"


def round_randomness(parent_hash: str, merkle_root: str) -> str:
    """The round's seed, 64 hex characters: SHA-256 of a domain tag, the parent block's hash and
    the Merkle root of the accepted transactions (both as raw 32-byte digests).

    Raises:
        ValueError: A hash is not 64 hex characters.
    """
    try:
        parent, root = bytes.fromhex(parent_hash), bytes.fromhex(merkle_root)
    except (TypeError, ValueError):
        raise ValueError("parent_hash and merkle_root must be 64 hex characters") from None
    if len(parent) != 32 or len(root) != 32:
        raise ValueError("parent_hash and merkle_root must be 64 hex characters")
    return hashlib.sha256(RANDOMNESS_DOMAIN + parent + root).hexdigest()


def round_generator(randomness: str) -> torch.Generator:
    """A CPU generator seeded with the first 63 bits of the round's :func:`round_randomness`."""
    return torch.Generator().manual_seed(int(randomness[:16], 16) >> 1)
