"""Who may write the chain: attacks built with the library's own functions.

Block format 2 has every block signed by its miner and the genesis block list the keys allowed
to mine; without that anyone could mine a heavier branch (dropping honest transactions) and
every node would follow it. Rounds must increase by one and time may not run backwards by more
than the clock skew tolerance. Each test here builds an attack with ``make_block``,
``mine_header``, ``Block(...).signed(key)`` and ``Ledger.create``, and checks that all three
gates refuse it with a reason a user can act on: :meth:`Ledger.append`, :meth:`Ledger.open`
(block files written straight to disk, as an attacker with access to the folder would) and
:func:`verify_ledger`.

The ``ledger`` fixture (conftest.py) holds genesis, ``b1`` and ``b2`` (rounds 1 and 2, three
clients each), mined and signed by ``miner_key``, the genesis block's only miner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from torchchain.chain.block import MAX_INT, Block, Transaction, make_block, make_genesis
from torchchain.chain.block import mine_header as mine
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.ledger import MAX_CLOCK_SKEW_MS, Ledger, block_file_name
from torchchain.chain.verify import verify_ledger
from torchchain.errors import LedgerError

DIFFICULTY = 8  # as conftest.py's fixtures
CONFIG = {"clients": 3, "rounds": 2, "seed": 0, "strategy": "fedavg"}

NOT_AUTHORIZED = "is not one of the miners the genesis block authorizes"
NOT_SIGNED = "the block is not signed by its miner"


@pytest.fixture(scope="module")
def mallory() -> SigningKey:
    """A key the genesis block does not list as a miner."""
    return SigningKey.from_seed_material("tests/chain/mallory")


def _write_raw(ledger_path: Path, block: Block) -> str:
    """Writes a block file straight into the folder, past every check of Ledger.append."""
    name = block_file_name(block)
    (ledger_path / "blocks" / name).write_bytes(block.to_bytes())
    return name


def _assert_append_refused(ledger: Ledger, block: Block, message: str) -> None:
    files = sorted((ledger.path / "blocks").iterdir())
    head = ledger.head_hash
    with pytest.raises(LedgerError, match=message) as info:
        ledger.append(block)
    assert info.value.block == block_file_name(block)
    assert sorted((ledger.path / "blocks").iterdir()) == files
    assert ledger.head_hash == head


def _assert_readers_refuse(path: Path, name: str, message: str) -> None:
    """Ledger.open and verify_ledger both refuse the folder, naming the block file ``name``."""
    for load in (Ledger.open, verify_ledger):
        with pytest.raises(LedgerError, match=message) as info:
            load(path)
        assert info.value.block == name, f"{load.__name__}: {info.value}"


def _assert_refused_everywhere(ledger: Ledger, block: Block, message: str) -> None:
    _assert_append_refused(ledger, block, message)
    name = _write_raw(ledger.path, block)
    try:
        _assert_readers_refuse(ledger.path, name, message)
    finally:
        (ledger.path / "blocks" / name).unlink()
    assert verify_ledger(ledger.path).head == ledger.head_hash


def _empty_block(
    ledger: Ledger, prev: Block, key: SigningKey, *, round: int | None = None, time_ms: int | None = None,
    transactions: Sequence[Transaction] = (), tag: str = "",
) -> Block:
    """A block on ``prev`` mined and signed by ``key`` with its model blob stored, so that the
    only thing wrong with it is what the caller changes."""
    model = ledger.put_blob(f"model after {prev.hash} {tag}".encode())
    return make_block(
        prev=prev,
        round=prev.header.round + 1 if round is None else round,
        transactions=transactions,
        meta={"tag": tag},
        model_hash=model,
        miner=key,
        difficulty=DIFFICULTY,
        time_ms=prev.header.time_ms + 1 if time_ms is None else time_ms,
    )


# ---------------------------------------------------------------- miners the genesis does not list


def test_a_heavier_fork_mined_by_an_unlisted_key_that_drops_honest_transactions_is_refused(
    ledger: Ledger, mallory: SigningKey, keys: list[SigningKey]
) -> None:
    g, b1, b2 = ledger.blocks()
    # Mallory rewrites round 1 without keys[0]'s update, reusing the other clients' genuinely
    # signed transactions, then outworks the honest chain with two more blocks.
    dropped = [tx for tx in b1.transactions if tx.client != keys[0].public_key]
    assert len(dropped) == 2 and all(tx.has_valid_signature() for tx in dropped)
    m1 = _empty_block(ledger, g, mallory, transactions=dropped, time_ms=b1.header.time_ms, tag="m1")
    m2 = _empty_block(ledger, m1, mallory, tag="m2")
    m3 = _empty_block(ledger, m2, mallory, tag="m3")
    assert all(b.has_valid_signature() for b in (m1, m2, m3))  # well signed, by the wrong key

    message = f"miner {mallory.public_key[:12]} {NOT_AUTHORIZED}"
    _assert_append_refused(ledger, m1, message)
    names = [_write_raw(ledger.path, b) for b in (m1, m2, m3)]
    _assert_readers_refuse(ledger.path, names[0], message)
    for name in names:
        (ledger.path / "blocks" / name).unlink()
    assert verify_ledger(ledger.path).head == b2.hash


def test_an_unlisted_key_cannot_write_even_one_empty_block(ledger: Ledger, mallory: SigningKey) -> None:
    block = _empty_block(ledger, ledger.head, mallory, tag="mallory")
    _assert_refused_everywhere(ledger, block, NOT_AUTHORIZED)


def test_a_genesis_mined_by_a_key_it_does_not_list_is_refused(
    tmp_path: Path, genesis: Block, mallory: SigningKey
) -> None:
    # The genesis meta lists miner_key only; Mallory puts her own key in the header and signs.
    header = mine(dataclasses.replace(genesis.header, miner=mallory.public_key))
    forged = Block(header, (), genesis.meta).signed(mallory)
    with pytest.raises(LedgerError, match=NOT_AUTHORIZED):
        Ledger.create(tmp_path / "created", forged, blobs=[b"model-0"])
    path = tmp_path / "raw"
    (path / "blocks").mkdir(parents=True)
    (path / "blobs").mkdir()
    (path / "blobs" / sha256_hex(b"model-0")).write_bytes(b"model-0")
    name = _write_raw(path, forged)
    _assert_readers_refuse(path, name, NOT_AUTHORIZED)


def test_a_genesis_that_lists_two_miners_accepts_blocks_from_the_second(
    tmp_path: Path, keys: list[SigningKey], miner_key: SigningKey, mallory: SigningKey
) -> None:
    second = SigningKey.from_seed_material("tests/chain/second-miner")
    genesis = make_genesis(
        members=[k.public_key for k in keys], config=CONFIG, model_hash=sha256_hex(b"model-0"),
        miner=miner_key, miners=[miner_key.public_key, second.public_key], difficulty=DIFFICULTY,
        time_ms=1_700_000_000_000,
    )
    with Ledger.create(tmp_path / "l", genesis, blobs=[b"model-0"]) as ledger:
        assert ledger.miners == tuple(sorted([miner_key.public_key, second.public_key]))
        by_second = _empty_block(ledger, genesis, second, tag="second")
        assert not ledger.append(by_second).switched and ledger.head_hash == by_second.hash
        by_first = _empty_block(ledger, by_second, miner_key, tag="first")
        ledger.append(by_first)
        by_mallory = _empty_block(ledger, by_first, mallory, tag="mallory")
        _assert_append_refused(ledger, by_mallory, NOT_AUTHORIZED)
    reopened = Ledger.open(tmp_path / "l")
    assert [b.header.miner for b in reopened.blocks()[1:]] == [second.public_key, miner_key.public_key]
    assert reopened.genesis_info.miners == reopened.miners
    report = verify_ledger(tmp_path / "l", expect_head=by_first.hash)
    assert (report.height, report.head) == (2, by_first.hash)


# ---------------------------------------------------------------- block signatures


def test_a_block_without_a_signature_is_refused(ledger: Ledger, round_block: Any) -> None:
    block = round_block(ledger)
    unsigned = dataclasses.replace(block, signature="")
    _assert_refused_everywhere(ledger, unsigned, f"{NOT_SIGNED} {block.header.miner[:12]}")


def test_a_block_signed_by_another_key_is_refused(
    ledger: Ledger, round_block: Any, mallory: SigningKey, keys: list[SigningKey]
) -> None:
    # Mallory claims the authorized miner's key in the header but can only sign with her own
    # (or with some client's).
    block = round_block(ledger)
    for key in (mallory, keys[0]):
        forged = dataclasses.replace(block, signature=key.sign(block.header.signing_payload()))
        assert not forged.has_valid_signature()
        _assert_refused_everywhere(ledger, forged, NOT_SIGNED)


def test_a_signature_copied_from_another_block_is_refused(ledger: Ledger, round_block: Any) -> None:
    # A genuine signature of the miner, over a different block.
    block = round_block(ledger)
    replayed = dataclasses.replace(block, signature=ledger.head.signature)
    _assert_refused_everywhere(ledger, replayed, NOT_SIGNED)


def test_an_unsigned_genesis_is_refused(tmp_path: Path, genesis: Block) -> None:
    unsigned = dataclasses.replace(genesis, signature="")
    with pytest.raises(LedgerError, match=NOT_SIGNED):
        Ledger.create(tmp_path / "created", unsigned, blobs=[b"model-0"])
    path = tmp_path / "raw"
    (path / "blocks").mkdir(parents=True)
    (path / "blobs").mkdir()
    (path / "blobs" / sha256_hex(b"model-0")).write_bytes(b"model-0")
    _assert_readers_refuse(path, _write_raw(path, unsigned), NOT_SIGNED)


# ---------------------------------------------------------------- proof of work


def test_a_chain_mined_at_difficulty_zero_under_a_genesis_of_eight_is_refused(
    ledger: Ledger, miner_key: SigningKey
) -> None:
    g = ledger.genesis
    assert g.header.difficulty == DIFFICULTY == 8
    cheap = make_block(
        prev=g, round=1, transactions=[], meta={}, model_hash=g.header.model_hash, miner=miner_key,
        difficulty=0, time_ms=g.header.time_ms,
    )
    _assert_refused_everywhere(ledger, cheap, "difficulty 0 differs from the chain's difficulty 8")
    # Claiming 8 bits in the header without doing the work does not help either.
    header = dataclasses.replace(cheap.header, difficulty=8)
    while header.hash().startswith("00"):
        header = header.with_nonce(header.nonce + 1)
    unmined = Block(header, (), {}).signed(miner_key)
    _assert_refused_everywhere(ledger, unmined, "proof of work does not meet the header's difficulty of 8 bits")


def test_a_genesis_claiming_eight_bits_without_the_work_is_refused(
    tmp_path: Path, genesis: Block, miner_key: SigningKey
) -> None:
    header = genesis.header
    while header.hash().startswith("00"):
        header = header.with_nonce(header.nonce + 1)
    unmined = Block(header, (), genesis.meta).signed(miner_key)
    with pytest.raises(LedgerError, match="proof of work does not meet the header's difficulty of 8 bits"):
        Ledger.create(tmp_path / "created", unmined)


# ---------------------------------------------------------------- rounds


@pytest.mark.parametrize(
    ("round_", "label"),
    [(2, "repeated"), (1, "going back"), (4, "skipping one"), (MAX_INT, "2**63 - 1")],
)
def test_rounds_must_increase_by_one(ledger: Ledger, miner_key: SigningKey, round_: int, label: str) -> None:
    head = ledger.head
    assert head.header.round == 2
    block = _empty_block(ledger, head, miner_key, round=round_, tag=label)
    _assert_refused_everywhere(ledger, block, f"round {round_} does not follow round 2: rounds increase by one")


def test_a_chain_whose_rounds_read_seven_seven_is_refused(
    tmp_path: Path, genesis: Block, miner_key: SigningKey
) -> None:
    with Ledger.create(tmp_path / "l", genesis, blobs=[b"model-0"]) as ledger:
        seven = _empty_block(ledger, genesis, miner_key, round=7, tag="7")
        _assert_refused_everywhere(ledger, seven, "round 7 does not follow round 0")
        one = _empty_block(ledger, genesis, miner_key, tag="1")
        ledger.append(one)
        again = _empty_block(ledger, one, miner_key, round=1, tag="1 again")
        _assert_refused_everywhere(ledger, again, "round 1 does not follow round 1")


# ---------------------------------------------------------------- time


def test_a_time_running_backwards_beyond_the_tolerance_is_refused(ledger: Ledger, miner_key: SigningKey) -> None:
    head = ledger.head
    late = head.header.time_ms - MAX_CLOCK_SKEW_MS - 1
    block = _empty_block(ledger, head, miner_key, time_ms=late, tag="late")
    _assert_refused_everywhere(
        ledger, block, f"{MAX_CLOCK_SKEW_MS + 1} ms before its parent's; at most {MAX_CLOCK_SKEW_MS} ms"
    )


def test_a_time_running_backwards_within_the_tolerance_is_accepted(ledger: Ledger, miner_key: SigningKey) -> None:
    head = ledger.head
    skewed = _empty_block(ledger, head, miner_key, time_ms=head.header.time_ms - MAX_CLOCK_SKEW_MS, tag="skewed")
    ledger.append(skewed)
    assert ledger.head_hash == skewed.hash
    assert Ledger.open(ledger.path).head_hash == skewed.hash
    assert verify_ledger(ledger.path, expect_head=skewed.hash).height == 3


# ---------------------------------------------------------------- the head a caller expects


def test_expect_head_detects_a_truncated_ledger(ledger: Ledger) -> None:
    head = ledger.head_hash
    assert verify_ledger(ledger.path, expect_head=head).head == head
    (ledger.path / "blocks" / block_file_name(ledger.head)).unlink()
    # The shorter chain is valid on its own: only the expected head tells what is missing.
    assert verify_ledger(ledger.path).height == 1
    message = r"at height 1, but .* was expected; that block is not in this ledger \(truncated"
    with pytest.raises(LedgerError, match=message) as info:
        verify_ledger(ledger.path, expect_head=head)
    assert head[:12] in str(info.value)


def test_expect_head_detects_a_head_on_a_side_branch(ledger: Ledger, child_block: Any) -> None:
    g, b1, b2 = ledger.blocks()
    rival = child_block(ledger, b1, "rival")
    ledger.append(rival)
    best, side = min(b2.hash, rival.hash), max(b2.hash, rival.hash)
    assert ledger.head_hash == best
    assert verify_ledger(ledger.path, expect_head=best).forks == 1
    with pytest.raises(LedgerError, match="but .* was expected; that block is on a side branch"):
        verify_ledger(ledger.path, expect_head=side)
    # Two blocks on the side branch's tip make it the best chain: a swapped branch.
    tip = child_block(ledger, ledger.block_by_hash(side), "tip")
    ledger.append(tip)
    with pytest.raises(LedgerError, match="that block is on a side branch"):
        verify_ledger(ledger.path, expect_head=best)
    assert verify_ledger(ledger.path, expect_head=tip.hash).height == 3
