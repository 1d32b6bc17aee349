"""Proof of work: find a nonce whose block hash starts with ``difficulty`` zero bits.

The hashcash scheme of Back (2002), "Hashcash - A Denial of Service Counter-Measure", as used
for blocks by Nakamoto (2008), "Bitcoin: A Peer-to-Peer Electronic Cash System". Difficulty is
counted in leading zero bits of the SHA-256 digest, so each extra bit doubles the expected work.
"""

from __future__ import annotations

import hashlib

from torchchain.errors import LedgerError

__all__ = ["block_work", "meets_difficulty", "mine_nonce"]

_DIGEST_BITS = 256
_NONCE_LIMIT = 2**64


def _check_bits(bits: int) -> None:
    if type(bits) is not int or not 0 <= bits <= _DIGEST_BITS:
        raise ValueError(f"difficulty must be an integer number of bits in [0, {_DIGEST_BITS}], got {bits!r}")


def meets_difficulty(block_hash: str, bits: int) -> bool:
    """Whether the 256-bit digest written as ``block_hash`` (64 hex characters) starts with
    ``bits`` zero bits.

    Raises:
        ValueError: ``block_hash`` is not 64 hex characters or ``bits`` is outside [0, 256].
    """
    _check_bits(bits)
    if not isinstance(block_hash, str) or len(block_hash) != 64:
        raise ValueError(f"a block hash is 64 hex characters, got {block_hash!r}")
    return int(block_hash, 16) >> (_DIGEST_BITS - bits) == 0


def block_work(bits: int) -> int:
    """The expected number of hashes to mine a block at ``bits`` difficulty: ``2**bits``.

    Summed over a chain it is the chain's total work, the measure a fork choice compares.
    """
    _check_bits(bits)
    return 2**bits


def mine_nonce(prefix: bytes, bits: int, *, start_nonce: int = 0) -> int:
    """Searches nonces upward from ``start_nonce`` until ``SHA-256(prefix + nonce)`` starts with
    ``bits`` zero bits; the nonce is hashed as 8 big-endian bytes.

    ``prefix`` is hashed once; each try copies that SHA-256 state and feeds it only the 8 nonce
    bytes, and the digest is compared as bytes against a precomputed target (big-endian bytes
    order like the numbers they encode). Works on bytes only, so it knows nothing of blocks.

    Args:
        prefix: The nonce-free part of the hashed input (a header's ``prefix_bytes()``).
        bits: Difficulty in leading zero bits.
        start_nonce: The first nonce to try (lets several workers split the search).

    Returns:
        The first nonce at or above ``start_nonce`` that meets the difficulty.

    Raises:
        ValueError: ``start_nonce`` is outside [0, 2**64) or ``bits`` outside [0, 256].
        LedgerError: No nonce from ``start_nonce`` to 2**64 - 1 works (only conceivable with a
            start near the top of the range).
    """
    _check_bits(bits)
    if type(start_nonce) is not int or not 0 <= start_nonce < _NONCE_LIMIT:
        raise ValueError(f"start_nonce must be an integer in [0, 2**64), got {start_nonce!r}")
    if bits == 0:
        return start_nonce
    # digest < target  <=>  the first `bits` bits of the digest are zero.
    target = (1 << (_DIGEST_BITS - bits)).to_bytes(32, "big")
    copy_midstate = hashlib.sha256(prefix).copy
    for nonce in range(start_nonce, _NONCE_LIMIT):
        candidate = copy_midstate()
        candidate.update(nonce.to_bytes(8, "big"))
        if candidate.digest() < target:
            return nonce
    raise LedgerError(
        f"no nonce in [{start_nonce}, 2**64) meets difficulty {bits}; mine from a lower start_nonce"
    )
