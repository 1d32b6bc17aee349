"""A committed block with what a peer needs to check it on its own: what a restarted peer that
is behind fetches from a peer that is not.

A peer killed while the others committed a block restarts one block (or more) behind. It takes
each missing block from a peer that holds it as one package, and trusts nothing in it: it
checks the block like a proposal (:func:`~torchchain.chain.ledger.check_block`), recounts its
attestations (:func:`~torchchain.protocol.attestation.check_attestation_set`) and, on a chain
with ``validation=vote``, its votes (:func:`~torchchain.protocol.vote.check_vote_set`), and
replays the round from the update payloads (:func:`~torchchain.protocol.round.replay_round`), which also
gives it the model and round state blobs. Layout (all integers big-endian)::

    PACKAGE_MAGIC                     27 bytes
    count                             4 bytes, at least 3
    count times:
        length                        8 bytes
        bytes                         the block, its attestation set, its vote set (empty
                                      without votes), then the update payloads of its
                                      transactions

:func:`decode_package` checks every length against its bound before slicing and that nothing
follows the last part; that each payload is the one a transaction's hash names is the
receiver's check.
"""

from __future__ import annotations

from collections.abc import Iterable

from torchchain.chain.block import MAX_BLOCK_BYTES
from torchchain.errors import SerializationError
from torchchain.protocol.attestation import attestation_set_bound
from torchchain.protocol.bundle import FrameReader
from torchchain.protocol.vote import vote_set_bound

__all__ = ["PACKAGE_MAGIC", "decode_package", "encode_package", "package_bound"]

PACKAGE_MAGIC = b"torchchain/block-package/v1"


def package_bound(*, peers: int, max_payloads: int, max_payload_bytes: int) -> int:
    """The largest package of a chain with ``peers`` peers: a block, its attestation and vote
    sets and at most ``max_payloads`` payloads (one per member) of at most ``max_payload_bytes``
    each."""
    return (
        len(PACKAGE_MAGIC) + 4 + 8 * (max_payloads + 3) + MAX_BLOCK_BYTES + attestation_set_bound(peers)
        + vote_set_bound(peers, max_payloads) + max_payloads * max_payload_bytes
    )


def encode_package(block: bytes, attestations: bytes, votes: bytes, payloads: Iterable[bytes]) -> bytes:
    """The package of a block's bytes, its stored attestation and vote sets (``b""`` without
    votes) and its update payloads."""
    parts = [bytes(block), bytes(attestations), bytes(votes), *(bytes(b) for b in payloads)]
    out = [PACKAGE_MAGIC, len(parts).to_bytes(4, "big")]
    for part in parts:
        out += [len(part).to_bytes(8, "big"), part]
    return b"".join(out)


def decode_package(
    data: bytes, *, peers: int, max_payloads: int, max_payload_bytes: int, what: str = "package"
) -> tuple[bytes, bytes, bytes, list[bytes]]:
    """Parse a package strictly; ``(block bytes, attestation set bytes, vote set bytes, payloads)``.

    Raises:
        SerializationError: A wrong magic, a count or length over its bound or past the end,
            or bytes after the last part.
    """
    reader = FrameReader(data, magic=PACKAGE_MAGIC, kind="package", what=what)
    take = reader.take
    count = int.from_bytes(take(4, "the count"), "big")
    if not 3 <= count <= max_payloads + 3:
        raise SerializationError(
            f"{what}: {count} parts, not a block, its attestations, its votes and at most {max_payloads} payloads"
        )
    bounds = [MAX_BLOCK_BYTES, attestation_set_bound(peers), vote_set_bound(peers, max_payloads)]
    bounds += [max_payload_bytes] * (count - 3)
    names = ["the block", "the attestation set", "the vote set"] + [f"payload {i}" for i in range(count - 3)]
    parts = []
    for bound, name in zip(bounds, names):
        length = int.from_bytes(take(8, f"{name}'s length"), "big")
        if length > bound:
            raise SerializationError(f"{what}: {name} is {length} bytes, over {bound}")
        parts.append(bytes(take(length, name)))
    reader.finish("the last part")
    return parts[0], parts[1], parts[2], parts[3:]
