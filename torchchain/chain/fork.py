"""Fork choice: the tree of every known block and the chain a node follows.

Two miners can each find a valid block at the same height; both are kept, and a node follows
the branch with the most cumulative proof of work, the rule of Nakamoto (2008), "Bitcoin: A
Peer-to-Peer Electronic Cash System". Ties go to the tip with the lowest hash, so every node
that holds the same blocks follows the same chain, whatever order the blocks arrived in.

:class:`BlockTree` trusts its input: it only links blocks and chooses the best tip. Whether a
block is valid is the ledger's check (:func:`torchchain.chain.ledger.check_block`), made before
a block is added.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchchain.chain.block import Block
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
    """Every block descending from one genesis, and the best chain among them.

    The best tip maximises cumulative work (the sum of :func:`~torchchain.chain.pow.block_work`
    from genesis to the tip), ties broken by the lowest tip hash. Because the rule compares
    blocks only, the best tip after adding a set of blocks does not depend on their order.
    """

    def __init__(self, genesis: Block) -> None:
        self._blocks: dict[str, Block] = {genesis.hash: genesis}
        self._work: dict[str, int] = {genesis.hash: block_work(genesis.header.difficulty)}
        self._chain: list[Block] = [genesis]

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._blocks

    def get(self, block_hash: str) -> Block | None:
        """The block with hash ``block_hash``, or ``None`` if the tree does not hold it."""
        return self._blocks.get(block_hash)

    @property
    def genesis(self) -> Block:
        """The root block."""
        return self._chain[0]

    @property
    def head(self) -> Block:
        """The tip of the best chain."""
        return self._chain[-1]

    def chain(self) -> list[Block]:
        """The best chain, genesis first (a new list)."""
        return list(self._chain)

    def block_at(self, height: int) -> Block:
        """The best chain's block at ``height``.

        Raises:
            IndexError: ``height`` is not in ``[0, head height]``.
        """
        if not 0 <= height < len(self._chain):
            raise IndexError(f"no block at height {height} on the best chain")
        return self._chain[height]

    def on_best_chain(self, block: Block) -> bool:
        """Whether ``block`` is one of the best chain's blocks."""
        height = block.header.height
        return height < len(self._chain) and self._chain[height].hash == block.hash

    def work(self, block_hash: str) -> int:
        """Cumulative work from genesis to the block ``block_hash``, both included.

        Raises:
            KeyError: The tree does not hold that block.
        """
        return self._work[block_hash]

    def _beats_head(self, block: Block) -> bool:
        work, head_work = self._work[block.hash], self._work[self.head.hash]
        # Hashes are fixed-length lowercase hex, so string order is numeric order.
        return work > head_work or (work == head_work and block.hash < self.head.hash)

    def add(self, block: Block) -> Reorg | None:
        """Links ``block`` under its parent and moves the head if the block's branch is now best.

        Adding a block already held changes nothing.

        Returns:
            A :class:`Reorg` when the head moved to another branch; ``None`` when the block
            extended the best chain, landed on a side branch, or was already held.

        Raises:
            KeyError: The tree does not hold the block's parent.
        """
        if block.hash in self._blocks:
            return None
        parent_hash = block.header.prev_hash
        work = self._work[parent_hash] + block_work(block.header.difficulty)
        self._blocks[block.hash] = block
        self._work[block.hash] = work
        if not self._beats_head(block):
            return None
        old_head = self.head
        if parent_hash == old_head.hash:
            self._chain.append(block)
            return None
        branch = [block]
        while not self.on_best_chain(branch[-1]):
            branch.append(self._blocks[branch[-1].header.prev_hash])
        ancestor = branch.pop()
        self._chain[ancestor.header.height + 1 :] = reversed(branch)
        return Reorg(
            old_head=old_head.hash,
            new_head=block.hash,
            common_ancestor=ancestor.hash,
            depth=old_head.header.height - ancestor.header.height,
        )
