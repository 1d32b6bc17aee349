"""Full audit of a ledger folder, block by block from genesis.

:func:`verify_ledger` re-checks everything a node checked when it appended each block, from the
files alone: strict canonical parsing, file names, proof of work at the chain's difficulty,
hash links, Merkle roots, metadata and config hashes, transaction signatures, membership,
rounds and base hashes, and that every update and model blob is stored and intact. It does not
re-run aggregation: recomputing the model hashes is the runtime's audit, on top of this one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from torchchain.chain.block import Block
from torchchain.chain.ledger import (
    BLOBS_DIR,
    BLOCKS_DIR,
    check_block,
    check_genesis,
    list_block_files,
    read_block_file,
)
from torchchain.errors import LedgerError

__all__ = ["VerifyReport", "verify_ledger"]

_CHUNK_BYTES = 1024 * 1024


@dataclass
class VerifyReport:
    """What :func:`verify_ledger` checked.

    Attributes:
        height: Height of the head block.
        head: Hash of the head block.
        transactions: Number of transactions in all blocks.
        blobs_checked: Number of distinct blobs whose content was hashed and matched its name.
    """

    height: int
    head: str
    transactions: int
    blobs_checked: int

    def summary(self) -> str:
        """One line for a terminal, e.g. ``ledger OK: 31 blocks (height 30), 150 transactions,
        181 blobs verified, head 00001a2b3c4d``."""
        return (
            f"ledger OK: {self.height + 1} blocks (height {self.height}), {self.transactions} transactions, "
            f"{self.blobs_checked} blobs verified, head {self.head[:12]}"
        )


def _blob_matches(path: Path, digest: str) -> bool:
    # Streams the file so that a huge blob costs no memory.
    hasher = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK_BYTES):
                hasher.update(chunk)
    except OSError:
        return False
    return hasher.hexdigest() == digest


def _check_blobs(block: Block, blobs_dir: Path, checked: set[str]) -> None:
    """Checks the model blob and every update blob of ``block``, skipping those in ``checked``
    and adding the ones that pass."""
    blobs = [(block.header.model_hash, "model blob")]
    blobs += [
        (tx.update_hash, f"transaction {i} (client {tx.client[:12]}): update blob")
        for i, tx in enumerate(block.transactions)
    ]
    for digest, what in blobs:
        if digest in checked:
            continue
        path = blobs_dir / digest
        if not path.is_file():
            raise LedgerError(f"{what} {digest[:12]} is missing from {blobs_dir}")
        if not _blob_matches(path, digest):
            raise LedgerError(f"{what} {digest[:12]} is corrupt: its content does not hash to its name")
        checked.add(digest)


def verify_ledger(path: str | os.PathLike[str]) -> VerifyReport:
    """Audits the ledger folder at ``path``.

    Raises:
        LedgerError: The first failure found, walking from genesis; ``.block`` names the block
            file at fault (for a missing or corrupt blob: the first block that refers to it).
    """
    path = Path(path)
    blocks_dir = path / BLOCKS_DIR
    blobs_dir = path / BLOBS_DIR
    if not blocks_dir.is_dir():
        raise LedgerError(f"{path} is not a ledger folder (no {BLOCKS_DIR}/ inside)")
    entries = list_block_files(blocks_dir)
    if not entries:
        raise LedgerError(f"{path} holds no genesis block")

    first_height, first_digest, first_name = entries[0]
    genesis = read_block_file(blocks_dir / first_name, name=first_name, height=first_height, digest=first_digest)
    checked: set[str] = set()
    try:
        check_genesis(genesis)
        _check_blobs(genesis, blobs_dir, checked)
    except LedgerError as exc:
        raise LedgerError(exc.reason, block=first_name) from None

    prev = genesis
    transactions = 0
    for height, digest, name in entries[1:]:
        block = read_block_file(blocks_dir / name, name=name, height=height, digest=digest)
        try:
            check_block(block, prev=prev, genesis=genesis)
            _check_blobs(block, blobs_dir, checked)
        except LedgerError as exc:
            raise LedgerError(exc.reason, block=name) from None
        transactions += len(block.transactions)
        prev = block
    return VerifyReport(
        height=prev.header.height, head=prev.hash, transactions=transactions, blobs_checked=len(checked)
    )
