"""Full audit of a ledger folder, every block on every branch, from genesis.

:func:`verify_ledger` re-checks everything a node checked when it appended each block, from the
files alone: size limits before reading, strict canonical parsing, file names, one genesis,
every block extending a stored block, proof of work at the chain's difficulty, hash links,
rounds that increase by one, times that do not run backwards, block signatures by authorized
miners, Merkle roots, metadata and config hashes, transaction signatures, membership and base
hashes, and that every update and model blob (and any blob a caller names) is stored and intact. Blocks on side branches are
checked as strictly as the best chain's. It does not re-run aggregation: recomputing the model
hashes is the runtime's audit, on top of this one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from torchchain.chain.block import Block
from torchchain.chain.ledger import BLOBS_DIR, MAX_BLOB_BYTES, load_block_tree, sha256_regular_file
from torchchain.errors import LedgerError

__all__ = ["VerifyReport", "verify_ledger"]


@dataclass
class VerifyReport:
    """What :func:`verify_ledger` checked.

    Attributes:
        height: Height of the head block (the tip of the best chain).
        head: Hash of the head block.
        transactions: Number of transactions in the blocks of the best chain.
        blobs_checked: Number of distinct blobs, on every branch, whose content was hashed and
            matched its name.
        forks: Number of stored blocks that are not on the best chain (all of them verified).
    """

    height: int
    head: str
    transactions: int
    blobs_checked: int
    forks: int = 0

    def summary(self) -> str:
        """One line for a terminal, e.g. ``ledger OK: 31 blocks (height 30), 150 transactions,
        181 blobs verified, head 00001a2b3c4d``; blocks off the best chain are mentioned only
        when there are some (``..., 2 blocks on side branches, head ...``)."""
        forks = ""
        if self.forks > 0:
            forks = f", {self.forks} block{'s' if self.forks != 1 else ''} on side branches"
        return (
            f"ledger OK: {self.height + 1} blocks (height {self.height}), {self.transactions} transactions, "
            f"{self.blobs_checked} blobs verified{forks}, head {self.head[:12]}"
        )


BlobRefs = Callable[[Block], Iterable[tuple[str, str]]]
"""A function naming the blobs a block refers to beyond its model and updates, as
``(digest, what)`` pairs; the protocol layer supplies one for its round records."""


def _check_blobs(block: Block, blobs_dir: Path, checked: set[str], extra: BlobRefs | None) -> None:
    """Checks the model blob, every update blob and every ``extra`` blob of ``block``,
    skipping those in ``checked`` and adding the ones that pass."""
    blobs = [(block.header.model_hash, "model blob")]
    blobs += [
        (tx.update_hash, f"transaction {i} (client {tx.client[:12]}): update blob")
        for i, tx in enumerate(block.transactions)
    ]
    if extra is not None:
        blobs += list(extra(block))
    for digest, what in blobs:
        if digest in checked:
            continue
        try:
            actual = sha256_regular_file(blobs_dir / digest, max_bytes=MAX_BLOB_BYTES)
        except FileNotFoundError:
            raise LedgerError(f"{what} {digest[:12]} is missing from {blobs_dir}") from None
        except LedgerError as exc:
            raise LedgerError(f"{what} {digest[:12]}: {exc.reason}") from None
        if actual != digest:
            raise LedgerError(f"{what} {digest[:12]} is corrupt: its content does not hash to its name")
        checked.add(digest)


def verify_ledger(
    path: str | os.PathLike[str],
    *,
    expect_head: str | None = None,
    blob_refs: BlobRefs | None = None,
) -> VerifyReport:
    """Audits the ledger folder at ``path``: every stored block, on every branch.

    Blocks are streamed (read, checked, dropped), so memory is bounded by the largest block.
    Never writes to the folder (``.tmp-`` files of a writer at work are skipped).

    Args:
        path: The ledger folder.
        expect_head: The head hash the caller expects (from a run's ``summary.json`` or a
            peer); a ledger whose best chain ends elsewhere (truncated, or a swapped branch)
            is refused.
        blob_refs: Names further blobs each block refers to, which must be stored and intact
            (see :data:`BlobRefs`); raising :class:`LedgerError` refuses the block.

    Returns:
        A report on the best chain (most cumulative work, ties to the lowest tip hash).

    Raises:
        LedgerError: The first failure found, walking block files by height then hash;
            ``.block`` names the block file at fault (for a missing or corrupt blob: the first
            block that refers to it).
    """
    path = Path(path)
    blobs_dir = path / BLOBS_DIR
    checked: set[str] = set()
    tx_counts: dict[str, int] = {}

    def check(block: Block) -> None:
        _check_blobs(block, blobs_dir, checked, blob_refs)
        tx_counts[block.hash] = len(block.transactions)

    genesis, tree = load_block_tree(path, check_signatures=True, check=check)
    chain = tree.chain()
    if expect_head is not None and tree.head_hash != expect_head:
        where = "is on a side branch" if expect_head in tree else "is not in this ledger (truncated or replaced?)"
        raise LedgerError(
            f"the ledger's head is {tree.head_hash[:12]} at height {tree.head.height}, but {expect_head[:12]} "
            f"was expected; that block {where}"
        )
    return VerifyReport(
        height=tree.head.height,
        head=tree.head_hash,
        transactions=sum(tx_counts[h] for h in chain),
        blobs_checked=len(checked),
        forks=len(tree) - len(chain),
    )
