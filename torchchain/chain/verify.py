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

from torchchain.chain.block import Block, GenesisInfo, genesis_info
from torchchain.chain.ledger import BLOBS_DIR, BLOCKS_DIR, MAX_BLOB_BYTES, list_block_files, load_block_tree, sha256_regular_file
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
        pruned_below: Update blobs of blocks at or below this height may have been pruned under
            the chain's retention rule (``None``: every update blob is kept).
        pruned: How many update blobs were absent within that pruned range.
    """

    height: int
    head: str
    transactions: int
    blobs_checked: int
    forks: int = 0
    pruned_below: int | None = None
    pruned: int = 0

    def summary(self) -> str:
        """One line for a terminal, e.g. ``ledger OK: 31 blocks (height 30), 150 transactions,
        181 blobs verified, head 00001a2b3c4d``; blocks off the best chain are mentioned only
        when there are some (``..., 2 blocks on side branches, head ...``)."""
        forks = ""
        if self.forks > 0:
            forks = f", {self.forks} block{'s' if self.forks != 1 else ''} on side branches"
        pruned = ""
        if self.pruned:
            pruned = f", {self.pruned} update blobs of heights <= {self.pruned_below} pruned by the retention rule"
        return (
            f"ledger OK: {self.height + 1} blocks (height {self.height}), {self.transactions} transactions, "
            f"{self.blobs_checked} blobs verified{forks}{pruned}, head {self.head[:12]}"
        )


BlobRefs = Callable[[Block], Iterable[tuple[str, str]]]
"""A function naming the blobs a block refers to beyond its model and updates, as
``(digest, what)`` pairs; the protocol layer supplies one for its round records."""


def _check_blobs(
    block: Block, blobs_dir: Path, checked: set[str], extra: BlobRefs | None, *, prunable: bool, pruned: list[str]
) -> None:
    """Checks the model blob, every update blob and every ``extra`` blob of ``block``,
    skipping those in ``checked`` and adding the ones that pass. When ``prunable``, an absent
    update blob is recorded in ``pruned`` instead of refused (a present one must still be intact)."""
    blobs = [(block.header.model_hash, "model blob", False)]
    blobs += [
        (tx.update_hash, f"transaction {i} (client {tx.client[:12]}): update blob", prunable)
        for i, tx in enumerate(block.transactions)
    ]
    if extra is not None:
        blobs += [(digest, what, False) for digest, what in extra(block)]
    for digest, what, may_be_pruned in blobs:
        if digest in checked:
            continue
        try:
            actual = sha256_regular_file(blobs_dir / digest, max_bytes=MAX_BLOB_BYTES)
        except FileNotFoundError:
            if may_be_pruned:
                pruned.append(digest)
                continue
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
    keep_updates: Callable[[GenesisInfo], int | None] | None = None,
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
        keep_updates: Reads the chain's retention rule from its genesis: ``N`` means only the
            update blobs of the last ``N`` blocks must be stored (heights above the highest
            block's height minus ``N``); older ones may be absent, never altered. ``None``
            (or no function) keeps them all. Model, round-state and other blobs are never pruned.

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
    pruned: list[str] = []
    # Every block has the genesis difficulty, so the head is at the highest height stored.
    entries = list_block_files(path / BLOCKS_DIR) if (path / BLOCKS_DIR).is_dir() else []
    top = entries[-1][0] if entries else 0
    pruned_below: list[int | None] = [None]

    def check(block: Block) -> None:
        if block.header.height == 0 and keep_updates is not None:
            kept = keep_updates(genesis_info(block))
            pruned_below[0] = None if kept is None else top - kept
        limit = pruned_below[0]
        prunable = limit is not None and block.header.height <= limit
        _check_blobs(block, blobs_dir, checked, blob_refs, prunable=prunable, pruned=pruned)
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
        pruned_below=pruned_below[0],
        pruned=len(pruned),
    )
