from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import Any

import pytest

from torchchain.chain.block import Block, make_block
from torchchain.chain.block import mine_header as mine
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.ledger import Ledger, block_file_name
from torchchain.chain.verify import VerifyReport, verify_ledger
from torchchain.errors import LedgerError


def _write_raw(ledger: Ledger, block: Block) -> str:
    """Writes a block file directly, bypassing the checks of Ledger.append."""
    name = block_file_name(block)
    (ledger.path / "blocks" / name).write_bytes(block.to_bytes())
    return name


def _expect_failure(ledger: Ledger, name: str, message: str = "") -> LedgerError:
    with pytest.raises(LedgerError, match=message) as info:
        verify_ledger(ledger.path)
    assert info.value.block == name, str(info.value)
    return info.value


def test_verify_passes_on_a_three_block_ledger(ledger: Ledger) -> None:
    report = verify_ledger(ledger.path)
    # 3 model blobs and 3 clients x 2 rounds of update blobs.
    assert report == VerifyReport(height=2, head=ledger.head.hash, transactions=6, blobs_checked=9)
    assert report.summary() == (
        f"ledger OK: 3 blocks (height 2), 6 transactions, 9 blobs verified, head {ledger.head.hash[:12]}"
    )


def test_verify_ignores_a_leftover_tmp_file(ledger: Ledger) -> None:
    leftover = ledger.path / "blocks" / ".tmp-crashed"
    leftover.write_bytes(b"{")
    assert verify_ledger(ledger.path).height == 2
    assert leftover.read_bytes() == b"{"  # an audit never writes, nor deletes


def test_verify_refuses_a_folder_that_is_not_a_ledger(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="not a ledger folder"):
        verify_ledger(tmp_path)
    (tmp_path / "blocks").mkdir()
    with pytest.raises(LedgerError, match="no genesis"):
        verify_ledger(tmp_path)


def _flip_each(ledger: Ledger, height: int, positions: list[int]) -> None:
    name = block_file_name(ledger.block(height))
    path = ledger.path / "blocks" / name
    original = path.read_bytes()
    for position in positions:
        for mask in (0x01, 0x80):
            flipped = bytearray(original)
            flipped[position] ^= mask
            path.write_bytes(flipped)
            with pytest.raises(LedgerError) as info:
                verify_ledger(ledger.path)
            assert info.value.block == name, f"byte {position} ^ {mask:#x}: {info.value}"
    path.write_bytes(original)
    assert verify_ledger(ledger.path).height == 2


def test_flipping_any_byte_of_the_genesis_file_is_detected(ledger: Ledger) -> None:
    size = len(ledger.genesis.to_bytes())
    _flip_each(ledger, 0, list(range(size)))


def test_flipping_any_byte_of_a_round_block_file_is_detected(ledger: Ledger) -> None:
    size = len(ledger.block(1).to_bytes())
    _flip_each(ledger, 1, list(range(size)))


def test_flipping_a_sample_of_bytes_in_every_block_file_is_detected(ledger: Ledger) -> None:
    rng = random.Random(0)
    for height in range(ledger.height + 1):
        size = len(ledger.block(height).to_bytes())
        _flip_each(ledger, height, sorted(rng.sample(range(size), 60)) + [0, size - 1])


def test_flipping_a_byte_of_any_blob_names_the_first_block_that_uses_it(ledger: Ledger) -> None:
    first_user: dict[str, str] = {}
    for block in ledger.blocks():
        for digest in [block.header.model_hash] + [tx.update_hash for tx in block.transactions]:
            first_user.setdefault(digest, block_file_name(block))
    assert len(first_user) == 9
    for digest, name in first_user.items():
        path = ledger.blob_path(digest)
        original = path.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        path.write_bytes(flipped)
        error = _expect_failure(ledger, name, "corrupt")
        assert digest[:12] in error.reason
        path.unlink()
        _expect_failure(ledger, name, "missing")
        path.write_bytes(original)
    assert verify_ledger(ledger.path).blobs_checked == 9


def test_a_renamed_block_file_is_detected(ledger: Ledger) -> None:
    blocks_dir = ledger.path / "blocks"
    old = block_file_name(ledger.block(1))
    new = f"00000001-{'1' * 64}.json"
    os.rename(blocks_dir / old, blocks_dir / new)
    _expect_failure(ledger, new, "not to the hash in its file name")


def test_a_block_file_name_with_extra_zeros_is_detected(ledger: Ledger) -> None:
    blocks_dir = ledger.path / "blocks"
    old = block_file_name(ledger.block(1))
    os.rename(blocks_dir / old, blocks_dir / ("0" + old))
    _expect_failure(ledger, "0" + old, "should be named")


def test_a_deleted_middle_block_is_detected(ledger: Ledger) -> None:
    os.unlink(ledger.path / "blocks" / block_file_name(ledger.block(1)))
    _expect_failure(ledger, block_file_name(ledger.block(2)), "orphan block")


def _next_block(ledger: Ledger, round_block: Any, miner_key: SigningKey, **header_changes: Any) -> Block:
    """The next block with ``header_changes``, mined again and signed by the chain's miner."""
    block = round_block(ledger)
    header = mine(dataclasses.replace(block.header, **header_changes))
    return Block(header, block.transactions, block.meta).signed(miner_key)


def test_an_easier_block_sneaked_in_is_detected(ledger: Ledger, round_block: Any, miner_key: SigningKey) -> None:
    name = _write_raw(ledger, _next_block(ledger, round_block, miner_key, difficulty=2))
    _expect_failure(ledger, name, "difficulty 2 differs from the chain's difficulty 8")


def test_a_changed_config_hash_is_detected(ledger: Ledger, round_block: Any, miner_key: SigningKey) -> None:
    name = _write_raw(ledger, _next_block(ledger, round_block, miner_key, config_hash=sha256_hex(b"{}")))
    _expect_failure(ledger, name, "config hash differs")


def test_a_genesis_whose_config_does_not_match_its_hash_is_detected(
    tmp_path: Path, keys: list[SigningKey], miner_key: SigningKey
) -> None:
    from torchchain.chain.block import BlockHeader, make_genesis

    genesis = make_genesis(
        members=[k.public_key for k in keys], config={"seed": 0}, model_hash=sha256_hex(b"m"),
        miner=miner_key, difficulty=8, time_ms=0,
    )
    header: BlockHeader = mine(dataclasses.replace(genesis.header, config_hash=sha256_hex(b"other")))
    bad = Block(header, (), genesis.meta).signed(miner_key)
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / sha256_hex(b"m")).write_bytes(b"m")
    name = block_file_name(bad)
    (tmp_path / "blocks" / name).write_bytes(bad.to_bytes())
    with pytest.raises(LedgerError, match="config hash in the header does not match") as info:
        verify_ledger(tmp_path)
    assert info.value.block == name


def test_transaction_rules_are_checked(
    ledger: Ledger, round_block: Any, keys: list[SigningKey], miner_key: SigningKey
) -> None:
    block = round_block(ledger)
    cases = {
        "same client": [*block.transactions, block.transactions[0]],
        "round 7 differs": [dataclasses.replace(block.transactions[0], round=7).signed(keys[0])],
        "base hash": [dataclasses.replace(block.transactions[0], base_hash=ledger.genesis.hash).signed(keys[0])],
        "transaction 0 .*signature does not match": [
            dataclasses.replace(block.transactions[0], signature=block.transactions[1].signature)
        ],
    }
    for message, transactions in cases.items():
        # Mined and signed by the chain's own miner: only the transactions are wrong.
        bad = make_block(
            prev=ledger.head, round=block.header.round, transactions=transactions, meta=block.meta,
            model_hash=block.header.model_hash, miner=miner_key, difficulty=8, time_ms=block.header.time_ms,
        )
        name = _write_raw(ledger, bad)
        _expect_failure(ledger, name, message)
        os.unlink(ledger.path / "blocks" / name)
    assert verify_ledger(ledger.path).height == 2


def test_a_transaction_from_a_stranger_is_detected(ledger: Ledger, round_block: Any, keys: list[SigningKey]) -> None:
    stranger = SigningKey.from_seed_material("tests/chain/stranger")
    name = _write_raw(ledger, round_block(ledger, signers=[stranger]))
    _expect_failure(ledger, name, "not a member")
