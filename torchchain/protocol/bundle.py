"""A peer's submissions of one round as one message: what peers exchange before anyone mines.

Each peer relays its own clients' submissions to every other peer in one bundle, so every peer
selects from the same submissions and can check a proposed block against them. Layout (all
integers big-endian)::

    BUNDLE_MAGIC                      26 bytes
    count                             4 bytes
    count times:
        transaction length            4 bytes, at most MAX_TX_BYTES
        transaction                   canonical JSON of Transaction.to_dict()
        payload length                8 bytes, at most the chain's max_update_bytes
        payload                       the update bytes the transaction commits to

:func:`decode_submissions` is strict: every length is checked against its bound before the
bytes are sliced, the transaction must be exactly the canonical bytes of a well-formed
:class:`~torchchain.chain.block.Transaction`, and nothing may follow the last entry. Whether a
submission is acceptable (signature, membership, round, tensors) is
:func:`~torchchain.protocol.submission.select_submissions`'s decision, not the bundle's.
"""

from __future__ import annotations

from collections.abc import Iterable

from torchchain.chain.block import Transaction
from torchchain.chain.encoding import canonical_json, parse_json_object
from torchchain.errors import SerializationError
from torchchain.protocol.submission import Submission

__all__ = ["BUNDLE_MAGIC", "ENTRY_OVERHEAD", "MAX_TX_BYTES", "bundle_bound", "decode_submissions", "encode_submissions"]

BUNDLE_MAGIC = b"torchchain/submissions/v1\x00"
MAX_TX_BYTES = 4096
"""A transaction's canonical JSON is under 700 bytes; anything longer is not one."""
ENTRY_OVERHEAD = 64 * 1024
"""What an entry may take besides its payload (transaction and lengths), for message bounds."""


def bundle_bound(entries: int, max_update_bytes: int) -> int:
    """The largest bundle of at most ``entries`` submissions of at most ``max_update_bytes`` each."""
    return len(BUNDLE_MAGIC) + 4 + entries * (max_update_bytes + ENTRY_OVERHEAD)


def encode_submissions(submissions: Iterable[Submission]) -> bytes:
    """The bundle of ``submissions``, in the order given."""
    parts = []
    count = 0
    for submission in submissions:
        tx = canonical_json(submission.transaction.to_dict())
        payload = bytes(submission.payload)
        parts += [len(tx).to_bytes(4, "big"), tx, len(payload).to_bytes(8, "big"), payload]
        count += 1
    return b"".join([BUNDLE_MAGIC, count.to_bytes(4, "big"), *parts])


def decode_submissions(data: bytes, *, max_entries: int, max_payload_bytes: int, what: str = "bundle") -> list[Submission]:
    """Parse a bundle strictly.

    Args:
        data: The bundle's bytes, as a peer sent them.
        max_entries: The most submissions it may hold.
        max_payload_bytes: The largest payload an entry may carry.
        what: A name for errors (``"bundle of rank 2"``).

    Raises:
        SerializationError: A wrong magic, a count or length over its bound or past the end,
            a transaction that is not canonical and well-formed, or bytes after the last entry.
    """
    view = memoryview(bytes(data))
    if bytes(view[: len(BUNDLE_MAGIC)]) != BUNDLE_MAGIC:
        raise SerializationError(f"{what}: does not start with the bundle magic")
    offset = len(BUNDLE_MAGIC)

    def take(size: int, field: str) -> memoryview:
        nonlocal offset
        if offset + size > len(view):
            raise SerializationError(f"{what}: {field} runs past the end ({len(view) - offset} bytes left, {size} needed)")
        chunk = view[offset : offset + size]
        offset += size
        return chunk

    count = int.from_bytes(take(4, "the count"), "big")
    if count > max_entries:
        raise SerializationError(f"{what}: {count} submissions, more than the {max_entries} it may hold")
    submissions = []
    for i in range(count):
        tx_len = int.from_bytes(take(4, f"entry {i}'s transaction length"), "big")
        if tx_len > MAX_TX_BYTES:
            raise SerializationError(f"{what}: entry {i}'s transaction is {tx_len} bytes, over {MAX_TX_BYTES}")
        raw_tx = bytes(take(tx_len, f"entry {i}'s transaction"))
        tx = Transaction.from_dict(
            parse_json_object(raw_tx, what=f"{what}: entry {i}", max_bytes=MAX_TX_BYTES), what=f"{what}: entry {i}"
        )
        if canonical_json(tx.to_dict()) != raw_tx:
            raise SerializationError(f"{what}: entry {i}'s transaction is not in canonical form")
        payload_len = int.from_bytes(take(8, f"entry {i}'s payload length"), "big")
        if payload_len > max_payload_bytes:
            raise SerializationError(f"{what}: entry {i}'s payload is {payload_len} bytes, over {max_payload_bytes}")
        submissions.append(Submission(transaction=tx, payload=bytes(take(payload_len, f"entry {i}'s payload"))))
    if offset != len(view):
        raise SerializationError(f"{what}: {len(view) - offset} bytes follow the last entry")
    return submissions
