"""Forks made by hand: two miners' blocks at one height, a longer branch overtaking, ties.

The ``ledger`` fixture holds genesis ``g``, ``b1`` and ``b2`` (the head). Difficulty is the
same for every block (the ledger refuses any other), so a branch's work is its length.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from torchchain.chain.block import Block, BlockHeader
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.fork import BlockTree, Reorg
from torchchain.chain.ledger import AppendResult, Ledger, block_file_name
from torchchain.chain.verify import verify_ledger
from torchchain.errors import LedgerError

ChildBuilder = Callable[..., Block]


def _child_where(
    child_block: ChildBuilder, ledger: Ledger, parent: Block, accept: Callable[[Block], bool], *, prefix: str
) -> Block:
    """The first child of ``parent`` (tags ``prefix0``, ``prefix1``, ...) whose hash passes ``accept``."""
    for i in range(64):
        block = child_block(ledger, parent, f"{prefix}{i}")
        if accept(block):
            return block
    raise AssertionError("no candidate block passed; the hashes are uniform, so this does not happen")


def _files(ledger: Ledger) -> list[str]:
    return sorted(os.listdir(ledger.path / "blocks"))


def test_a_competing_block_with_a_higher_hash_is_kept_but_not_followed(
    ledger: Ledger, child_block: ChildBuilder
) -> None:
    head = ledger.head
    rival = _child_where(child_block, ledger, ledger.block(1), lambda b: b.hash > head.hash, prefix="rival")
    result = ledger.append(rival)
    assert result == AppendResult(head=head.hash, switched=False, reorg=None)
    assert ledger.head == head and ledger.height == 2 and ledger.forks == 1
    assert block_file_name(rival) in _files(ledger) and block_file_name(head) in _files(ledger)
    assert ledger.block_by_hash(rival.hash) == rival
    reopened = Ledger.open(ledger.path)
    assert reopened.head == head and reopened.forks == 1
    report = verify_ledger(ledger.path)
    assert (report.height, report.head, report.forks, report.transactions) == (2, head.hash, 1, 6)
    assert ", 1 block on side branches, head " in report.summary()


def test_an_equal_work_tie_goes_to_the_lowest_hash(
    ledger: Ledger, child_block: ChildBuilder, caplog: pytest.LogCaptureFixture
) -> None:
    old_head, b1 = ledger.head, ledger.block(1)
    rival = _child_where(child_block, ledger, b1, lambda b: b.hash < old_head.hash, prefix="low")
    with caplog.at_level(logging.WARNING, logger="torchchain.chain"):
        result = ledger.append(rival)
    reorg = Reorg(old_head=old_head.hash, new_head=rival.hash, common_ancestor=b1.hash, depth=1)
    assert result == AppendResult(head=rival.hash, switched=True, reorg=reorg)
    assert ledger.head == rival and ledger.block(2) == rival
    assert ledger.blocks() == [ledger.genesis, b1, rival]
    assert [r.name for r in caplog.records] == ["torchchain.chain"]
    assert "reorg" in caplog.text and rival.hash[:12] in caplog.text
    assert Ledger.open(ledger.path).head == rival
    assert verify_ledger(ledger.path).head == rival.hash


def test_the_tie_break_does_not_depend_on_arrival_order(
    ledger: Ledger, child_block: ChildBuilder, tmp_path: Path, genesis: Block
) -> None:
    # The same three blocks appended in the other order to a second ledger give the same head.
    b1, b2 = ledger.block(1), ledger.block(2)
    rival = child_block(ledger, b1, "rival")
    first = ledger.append(rival)
    other = Ledger.create(tmp_path / "other", genesis, blobs=[b"model-0"])
    for block in (b1, rival, b2):
        for digest in [block.header.model_hash] + [tx.update_hash for tx in block.transactions]:
            other.put_blob(ledger.get_blob(digest))
    other.append(b1)
    other.append(rival)
    last = other.append(b2)
    expected = min(b2.hash, rival.hash)
    assert ledger.head.hash == other.head.hash == first.head == last.head == expected
    assert first.switched == (expected == rival.hash) and last.switched == (expected == b2.hash)


def test_a_longer_branch_overtakes_and_the_reorg_names_its_depth_and_ancestor(
    ledger: Ledger, child_block: ChildBuilder, keys: list[SigningKey]
) -> None:
    g, b1, b2 = ledger.blocks()
    a1 = child_block(ledger, g, "a1", signers=keys[:2])
    assert ledger.append(a1) == AppendResult(head=b2.hash, switched=False, reorg=None)
    a2 = _child_where(child_block, ledger, a1, lambda b: b.hash > b2.hash, prefix="a2-")
    assert ledger.append(a2) == AppendResult(head=b2.hash, switched=False, reorg=None)
    a3 = child_block(ledger, a2, "a3", signers=keys)
    result = ledger.append(a3)
    assert result.switched and result.head == a3.hash
    assert result.reorg == Reorg(old_head=b2.hash, new_head=a3.hash, common_ancestor=g.hash, depth=2)
    assert ledger.blocks() == [g, a1, a2, a3] and ledger.height == 3 and ledger.forks == 2
    assert ledger.block(1) == a1

    reopened = Ledger.open(ledger.path)
    assert reopened.blocks() == [g, a1, a2, a3] and reopened.forks == 2
    report = verify_ledger(ledger.path)
    assert (report.height, report.head, report.forks) == (3, a3.hash, 2)
    assert report.transactions == 2 + 0 + 3
    # Genesis, b1, b2: 3 models and 6 updates; a1, a2, a3: 3 models and 5 updates.
    assert report.blobs_checked == 3 + 6 + 3 + 5


def test_a_reorg_deeper_in_the_chain_reports_the_nearest_common_ancestor(
    ledger: Ledger, child_block: ChildBuilder
) -> None:
    g, b1, b2 = ledger.blocks()
    b3 = child_block(ledger, b2, "b3")
    ledger.append(b3)
    c2 = _child_where(child_block, ledger, b1, lambda b: b.hash > b2.hash, prefix="c2-")
    c3 = _child_where(child_block, ledger, c2, lambda b: b.hash > b3.hash, prefix="c3-")
    assert not ledger.append(c2).switched and not ledger.append(c3).switched
    c4 = child_block(ledger, c3, "c4")
    assert ledger.append(c4).reorg == Reorg(old_head=b3.hash, new_head=c4.hash, common_ancestor=b1.hash, depth=2)
    # The old branch catches up and overtakes again: the switch back is reported too.
    b4 = _child_where(child_block, ledger, b3, lambda b: b.hash > c4.hash, prefix="b4-")
    assert not ledger.append(b4).switched
    b5 = child_block(ledger, b4, "b5")
    assert ledger.append(b5).reorg == Reorg(old_head=c4.hash, new_head=b5.hash, common_ancestor=b1.hash, depth=3)
    assert ledger.blocks() == [g, b1, b2, b3, b4, b5]
    assert Ledger.open(ledger.path).head == b5
    assert verify_ledger(ledger.path).forks == 3


def test_extending_a_side_branch_that_stays_lighter_does_not_switch(
    ledger: Ledger, child_block: ChildBuilder
) -> None:
    g = ledger.genesis
    b3 = child_block(ledger, ledger.head, "b3")
    ledger.append(b3)
    a1 = child_block(ledger, g, "a1")
    a2 = child_block(ledger, a1, "a2")
    for block in (a1, a2):
        assert ledger.append(block) == AppendResult(head=b3.hash, switched=False, reorg=None)
    assert ledger.head == b3 and ledger.forks == 2


def test_appending_a_stored_block_again_changes_nothing(ledger: Ledger, child_block: ChildBuilder) -> None:
    files = _files(ledger)
    for block in ledger.blocks():
        assert ledger.append(block) == AppendResult(head=ledger.head.hash, switched=False, reorg=None)
    assert _files(ledger) == files
    rival = child_block(ledger, ledger.block(1), "rival")
    first = ledger.append(rival)
    assert ledger.append(rival) == AppendResult(head=first.head, switched=False, reorg=None)
    assert ledger.forks == 1


def test_block_by_hash_finds_blocks_on_any_branch(ledger: Ledger, child_block: ChildBuilder) -> None:
    rival = child_block(ledger, ledger.block(1), "rival")
    ledger.append(rival)
    for block in [*ledger.blocks(), rival]:
        assert ledger.block_by_hash(block.hash) == block
    with pytest.raises(LedgerError, match="no block of this ledger has hash"):
        ledger.block_by_hash(sha256_hex(b"absent"))


def _write_raw(ledger: Ledger, block: Block) -> str:
    name = block_file_name(block)
    (ledger.path / "blocks" / name).write_bytes(block.to_bytes())
    return name


def test_an_orphan_block_file_is_refused_naming_it(ledger: Ledger, child_block: ChildBuilder) -> None:
    a1 = child_block(ledger, ledger.genesis, "a1")
    a2 = child_block(ledger, a1, "a2")
    name = _write_raw(ledger, a2)  # a1, its parent, is never stored
    for load in (Ledger.open, verify_ledger):
        with pytest.raises(LedgerError, match=f"orphan block.*{a1.hash[:12]}") as info:
            load(ledger.path)
        assert info.value.block == name


def test_a_second_genesis_file_is_refused(ledger: Ledger, genesis: Block, miner_key: SigningKey) -> None:
    from torchchain.chain.block import make_genesis

    other = make_genesis(
        members=list(genesis.meta["members"]), config={"seed": 1}, model_hash=sha256_hex(b"model-0"),
        miner=miner_key, difficulty=8, time_ms=0,
    )
    name = _write_raw(ledger, other)
    for load in (Ledger.open, verify_ledger):
        with pytest.raises(LedgerError, match="2 block files claim height 0.*exactly one genesis") as info:
            load(ledger.path)
        assert info.value.block in {name, block_file_name(genesis)}
        assert name in info.value.reason


def test_verify_checks_side_branches_as_strictly_as_the_best_chain(
    ledger: Ledger, child_block: ChildBuilder, keys: list[SigningKey], miner_key: SigningKey
) -> None:
    import dataclasses

    from torchchain.chain.block import make_block

    honest = child_block(ledger, ledger.block(1), "side", signers=keys[:1])
    forged_tx = dataclasses.replace(honest.transactions[0], signature=keys[1].sign(b"something else"))
    forged = make_block(
        prev=ledger.block(1), round=2, transactions=[forged_tx], meta=honest.meta,
        model_hash=honest.header.model_hash, miner=miner_key, difficulty=8, time_ms=honest.header.time_ms,
    )
    name = _write_raw(ledger, forged)
    assert forged.has_valid_signature()  # the miner signed it; the client's signature is the forgery
    with pytest.raises(LedgerError, match="transaction 0 .*signature does not match") as info:
        verify_ledger(ledger.path)
    assert info.value.block == name
    with pytest.raises(LedgerError, match="transaction 0 .*signature does not match"):
        ledger.append(forged)


def test_the_block_tree_picks_the_same_head_for_every_arrival_order(
    ledger: Ledger, child_block: ChildBuilder
) -> None:
    g, b1, b2 = ledger.blocks()
    a1 = child_block(ledger, g, "a1")
    a2 = child_block(ledger, a1, "a2")
    c2 = child_block(ledger, b1, "c2")
    blocks = [b1, b2, a1, a2, c2]
    heads = set()
    for order in itertools.permutations(blocks):
        tree = BlockTree(g.header)
        pending = list(order)
        while pending:  # a block arrives once its parent has
            block = next(b for b in pending if b.header.prev_hash in tree)
            pending.remove(block)
            tree.add(block.header)
        heads.add(tree.head_hash)
        assert tree.head.hash() == tree.head_hash
        assert tree.chain()[0] == g.hash and tree.work(tree.head_hash) == 3 * 2**8
        assert [tree.hash_at(h) for h in range(3)] == tree.chain()
        assert all(tree.on_best_chain(h) for h in tree.chain())
    assert heads == {min(b2.hash, a2.hash, c2.hash)}


def test_the_block_tree_holds_headers_only(ledger: Ledger, child_block: ChildBuilder) -> None:
    g, b1, b2 = ledger.blocks()
    rival = child_block(ledger, b1, "rival")
    tree = BlockTree(g.header)
    for block in (b1, b2, rival):
        assert tree.add(block.header) is None or block is rival
    assert len(tree) == 4 and tree.genesis == g.header
    for block in (g, b1, b2, rival):
        assert block.hash in tree
        assert tree.get(block.hash) == block.header
        assert type(tree.get(block.hash)) is BlockHeader
    assert tree.get(sha256_hex(b"absent")) is None
    best = min(b2.hash, rival.hash)
    side = max(b2.hash, rival.hash)
    assert tree.head_hash == best and tree.head == tree.get(best)
    assert tree.chain() == [g.hash, b1.hash, best]
    assert tree.on_best_chain(best) and not tree.on_best_chain(side)
    assert not tree.on_best_chain(sha256_hex(b"absent"))
    with pytest.raises(IndexError):
        tree.hash_at(3)
    with pytest.raises(KeyError):
        BlockTree(g.header).add(b2.header)  # its parent b1 is not held
