"""``torchchain verify``: the chain layer's full check plus the round records' own blobs.

:func:`torchchain.chain.verify.verify_ledger` checks structure, proof of work, links, authorship,
signatures and the model and update blobs. Round blocks also refer to blobs through their round
record (the strategy state, FLTrust's reference update); this wrapper parses every round record
strictly and has those blobs checked too.
"""

from __future__ import annotations

import os

from torchchain.chain.block import Block
from torchchain.chain.verify import VerifyReport
from torchchain.chain.verify import verify_ledger as verify_chain
from torchchain.protocol.record import RoundRecord

__all__ = ["record_blobs", "verify_ledger"]


def record_blobs(block: Block) -> list[tuple[str, str]]:
    """The blobs a block's round record refers to (none for genesis).

    Raises:
        LedgerError: The round record is malformed.
    """
    if block.header.height == 0:
        return []
    return RoundRecord.from_block(block).blobs()


def verify_ledger(path: str | os.PathLike[str], *, expect_head: str | None = None) -> VerifyReport:
    """Verify every block and every blob a ledger refers to (see the module docstring).

    Raises:
        LedgerError: The first failure; ``.block`` names the block file at fault.
    """
    return verify_chain(path, expect_head=expect_head, blob_refs=record_blobs)
