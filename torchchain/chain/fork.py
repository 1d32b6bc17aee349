"""Fork choice: the tree of every known block and the chain a node follows.

Two miners can each find a valid block at the same height; both are kept, and a node follows
the branch with the most cumulative proof of work, the rule of Nakamoto (2008), "Bitcoin: A
Peer-to-Peer Electronic Cash System". Ties go to the tip with the lowest hash, so every node
that holds the same blocks follows the same chain, whatever order the blocks arrived in.

:class:`BlockTree` trusts its input: it only links headers and chooses the best tip. Whether a
block is valid is the ledger's check (:func:`torchchain.chain.ledger.check_block`), made before
a block is added.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchchain.chain.block import BlockHeader
from torchchain.chain.pow import block_work

__all__ = ["BlockTree", "Reorg"]


@dataclass(frozen=True)
class Reorg:
    """The best chain moved to another branch.

    Attributes:
        old_head: Hash of the head before the switch.
        new_head: Hash of the head after the switch.
        common_ancestor: Hash of the last block the two branches share.
        depth: How many blocks of the old best chain were abandoned (old head height minus the
            common ancestor's height, at least 1).
    """

    old_head: str
    new_head: str
    common_ancestor: str
    depth: int


class BlockTree:
    """Every block header descending from one genesis, and the best chain among them.

    The tree holds headers only (a few hundred bytes each), never transactions or metadata, so
    a node can follow a long chain of large blocks in little memory; block bodies stay on disk.

    The best tip maximises cumulative work (the sum of :func:`~torchchain.chain.pow.block_work`
    from genesis to the tip), ties broken by the lowest tip hash. Because the rule compares
    headers only, the best tip after adding a set of blocks does not depend on their order.
    """

    def __init__(self, genesis: BlockHeader) -> None:
        genesis_hash = genesis.hash()
        self._headers: dict[str, BlockHeader] = {genesis_hash: genesis}
        self._work: dict[str, int] = {genesis_hash: block_work(genesis.difficulty)}
        self._chain: list[str] = [genesis_hash]

    def __len__(self) -> int:
        return len(self._headers)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._headers

    def get(self, block_hash: str) -> BlockHeader | None:
        """The header with hash ``block_hash``, or ``None`` if the tree does not hold it."""
        return self._headers.get(block_hash)

    @property
    def genesis(self) -> BlockHeader:
        """The root block's header."""
        return self._headers[self._chain[0]]

    @property
    def head(self) -> BlockHeader:
        """The header of the tip of the best chain."""
        return self._headers[self._chain[-1]]

    @property
    def head_hash(self) -> str:
        """The hash of the tip of the best chain."""
        return self._chain[-1]

    def chain(self) -> list[str]:
        """The hashes of the best chain, genesis first (a new list)."""
        return list(self._chain)

    def hash_at(self, height: int) -> str:
        """The hash of the best chain's block at ``height``.

        Raises:
            IndexError: ``height`` is not in ``[0, head height]``.
        """
        if not 0 <= height < len(self._chain):
            raise IndexError(f"no block at height {height} on the best chain")
        return self._chain[height]

    def on_best_chain(self, block_hash: str) -> bool:
        """Whether the block ``block_hash`` is one of the best chain's blocks."""
        header = self._headers.get(block_hash)
        if header is None:
            return False
        height = header.height
        return height < len(self._chain) and self._chain[height] == block_hash

    def work(self, block_hash: str) -> int:
        """Cumulative work from genesis to the block ``block_hash``, both included.

        Raises:
            KeyError: The tree does not hold that block.
        """
        return self._work[block_hash]

    def _beats_head(self, block_hash: str) -> bool:
        work, head_work = self._work[block_hash], self._work[self.head_hash]
        # Hashes are fixed-length lowercase hex, so string order is numeric order.
        return work > head_work or (work == head_work and block_hash < self.head_hash)

    def add(self, header: BlockHeader) -> Reorg | None:
        """Links the block of ``header`` under its parent and moves the head if its branch is now best.

        Adding a block already held changes nothing.

        Returns:
            A :class:`Reorg` when the head moved to another branch; ``None`` when the block
            extended the best chain, landed on a side branch, or was already held.

        Raises:
            KeyError: The tree does not hold the block's parent.
        """
        block_hash = header.hash()
        if block_hash in self._headers:
            return None
        parent_hash = header.prev_hash
        work = self._work[parent_hash] + block_work(header.difficulty)
        self._headers[block_hash] = header
        self._work[block_hash] = work
        if not self._beats_head(block_hash):
            return None
        old_head = self.head_hash
        if parent_hash == old_head:
            self._chain.append(block_hash)
            return None
        branch = [block_hash]
        while not self.on_best_chain(branch[-1]):
            branch.append(self._headers[branch[-1]].prev_hash)
        ancestor = branch.pop()
        ancestor_height = self._headers[ancestor].height
        old_height = self._headers[old_head].height
        self._chain[ancestor_height + 1 :] = reversed(branch)
        return Reorg(
            old_head=old_head,
            new_head=block_hash,
            common_ancestor=ancestor,
            depth=old_height - ancestor_height,
        )
