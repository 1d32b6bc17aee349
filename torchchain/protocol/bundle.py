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

__all__ = ["BUNDLE_MAGIC", "ENTRY_OVERHEAD", "MAX_TX_BYTES", "FrameReader", "bundle_bound", "decode_submissions", "encode_submissions"]

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


class FrameReader:
    """A cursor over length-prefixed bytes from a peer: every read is bounded by what is left.

    Args:
        data: The bytes, as received.
        magic: The bytes they must start with.
        kind: What they are, for the magic error (``"bundle"``).
        what: A name for errors (``"bundle of rank 2"``).

    Raises:
        SerializationError: The bytes do not start with ``magic``.
    """

    def __init__(self, data: bytes, *, magic: bytes, kind: str, what: str) -> None:
        self._view = memoryview(bytes(data))
        self._what = what
        if bytes(self._view[: len(magic)]) != magic:
            raise SerializationError(f"{what}: does not start with the {kind} magic")
        self._offset = len(magic)

    def take(self, size: int, field: str) -> memoryview:
        """The next ``size`` bytes; a :class:`SerializationError` naming ``field`` if fewer are left."""
        left = len(self._view) - self._offset
        if size > left:
            raise SerializationError(f"{self._what}: {field} runs past the end ({left} bytes left, {size} needed)")
        chunk = self._view[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def finish(self, last: str) -> None:
        """Refuse bytes after ``last`` (the final field)."""
        left = len(self._view) - self._offset
        if left:
            raise SerializationError(f"{self._what}: {left} bytes follow {last}")


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
    reader = FrameReader(data, magic=BUNDLE_MAGIC, kind="bundle", what=what)
    take = reader.take
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
    reader.finish("the last entry")
    return submissions
