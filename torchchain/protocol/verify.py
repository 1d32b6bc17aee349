"""``torchchain verify``: the chain layer's full check plus the round records' own blobs.

:func:`torchchain.chain.verify.verify_ledger` checks structure, proof of work, links, authorship,
signatures and the model and update blobs. Round blocks also refer to blobs through their round
record (the strategy state, FLTrust's reference update); this wrapper parses every round record
strictly and has those blobs checked too, and applies the chain's retention rule
(:mod:`torchchain.protocol.retention`).
"""

from __future__ import annotations

import os

from torchchain.chain.block import Block
from torchchain.chain.verify import VerifyReport
from torchchain.chain.verify import verify_ledger as verify_chain
from torchchain.chain.block import GenesisInfo
from torchchain.errors import ConfigError, LedgerError
from torchchain.protocol.record import RoundRecord
from torchchain.protocol.retention import updates_kept

__all__ = ["record_blobs", "verify_ledger"]


def record_blobs(block: Block) -> list[tuple[str, str]]:
    """The blobs a block's round record refers to (none for genesis).

    Raises:
        LedgerError: The round record is malformed.
    """
    if block.header.height == 0:
        return []
    return RoundRecord.from_block(block).blobs()


def _keep_updates(info: GenesisInfo) -> int | None:
    try:
        return updates_kept(info.config)
    except ConfigError as exc:
        raise LedgerError(str(exc)) from None


def verify_ledger(path: str | os.PathLike[str], *, expect_head: str | None = None) -> VerifyReport:
    """Verify every block and every blob a ledger refers to (see the module docstring).

    Update blobs that the chain's retention rule (``chain.keep_updates``) allows to be pruned
    may be absent; every other blob must be present, and every present blob intact.

    Raises:
        LedgerError: The first failure; ``.block`` names the block file at fault.
    """
    return verify_chain(path, expect_head=expect_head, blob_refs=record_blobs, keep_updates=_keep_updates)
