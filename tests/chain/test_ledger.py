from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path
from typing import Any

import pytest

import torchchain.chain.ledger as ledger_module
from torchchain.chain.block import Block, Transaction, make_block
from torchchain.chain.block import mine_header as mine
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.ledger import Ledger, block_file_name
from torchchain.chain.pow import meets_difficulty
from torchchain.errors import LedgerError


def _block_files(ledger: Ledger) -> list[str]:
    return sorted(os.listdir(ledger.path / "blocks"))


def test_create_append_open_round_trip(ledger: Ledger, keys: list[SigningKey]) -> None:
    assert ledger.height == 2
    assert _block_files(ledger) == [block_file_name(b) for b in ledger.blocks()]
    reopened = Ledger.open(ledger.path)
    assert reopened.blocks() == ledger.blocks()
    assert reopened.head.hash == ledger.head.hash
    assert reopened.genesis == ledger.genesis
    assert reopened.members == tuple(sorted(k.public_key for k in keys))
    assert reopened.config == ledger.genesis.meta["config"]
    assert reopened.block(1) == ledger.block(1)
    for tx in reopened.block(2).transactions:
        assert reopened.get_blob(tx.update_hash) == f"update round=2 client={tx.client}".encode()
    assert reopened.get_blob(reopened.head.header.model_hash) == b"model-2"


def test_block_file_name_is_height_then_hash(ledger: Ledger) -> None:
    assert block_file_name(ledger.head) == f"00000002-{ledger.head.hash}.json"
    assert (ledger.path / "blocks" / block_file_name(ledger.head)).read_bytes() == ledger.head.to_bytes()


def test_config_is_a_copy(ledger: Ledger) -> None:
    ledger.config["rounds"] = 99
    assert ledger.config["rounds"] == 2


def test_block_refuses_a_missing_height(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="no block at height 3"):
        ledger.block(3)


def test_create_refuses_a_folder_that_holds_blocks(ledger: Ledger, genesis: Block) -> None:
    with pytest.raises(LedgerError, match="already holds a ledger"):
        Ledger.create(ledger.path, genesis)


def test_create_refuses_a_block_that_is_not_a_genesis(ledger: Ledger, tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="genesis"):
        Ledger.create(tmp_path / "other", ledger.block(1))


def test_blobs_are_content_addressed(tmp_path: Path, genesis: Block) -> None:
    chain = Ledger.create(tmp_path / "l", genesis)
    digest = chain.put_blob(b"payload")
    assert digest == sha256_hex(b"payload")
    assert (tmp_path / "l" / "blobs" / digest).read_bytes() == b"payload"
    assert chain.put_blob(b"payload") == digest
    assert chain.has_blob(digest)
    assert not chain.has_blob(sha256_hex(b"other"))
    assert chain.get_blob(digest) == b"payload"


def test_get_blob_refuses_missing_oversized_and_corrupt_blobs(tmp_path: Path, genesis: Block) -> None:
    chain = Ledger.create(tmp_path / "l", genesis)
    digest = chain.put_blob(b"payload")
    with pytest.raises(LedgerError, match="missing"):
        chain.get_blob(sha256_hex(b"absent"))
    with pytest.raises(LedgerError, match="over the limit"):
        chain.get_blob(digest, max_bytes=6)
    (tmp_path / "l" / "blobs" / digest).write_bytes(b"paYload")
    with pytest.raises(LedgerError, match="corrupt"):
        chain.get_blob(digest)
    with pytest.raises(LedgerError, match="64 lowercase hex"):
        chain.get_blob("../../etc/passwd")


def _assert_refused(ledger: Ledger, block: Block, message: str) -> None:
    files = _block_files(ledger)
    head = ledger.head
    with pytest.raises(LedgerError, match=message) as info:
        ledger.append(block)
    assert info.value.block == block_file_name(block)
    assert _block_files(ledger) == files
    assert ledger.head == head


def test_append_refuses_a_block_whose_parent_is_unknown(
    ledger: Ledger, round_block: Any, miner_key: SigningKey
) -> None:
    block = round_block(ledger)
    header = mine(dataclasses.replace(block.header, prev_hash=sha256_hex(b"nowhere")))
    unknown_parent = Block(header, block.transactions, block.meta).signed(miner_key)
    _assert_refused(ledger, unknown_parent, "previous hash .* is not the hash of a block of this ledger")


def test_append_refuses_a_height_that_does_not_follow_its_parent(
    ledger: Ledger, round_block: Any, miner_key: SigningKey
) -> None:
    block = round_block(ledger)
    forked = make_block(
        prev=ledger.block(1), round=2, transactions=[], meta={}, model_hash=block.header.model_hash,
        miner=miner_key, difficulty=8, time_ms=block.header.time_ms,
    )
    forked = Block(mine(dataclasses.replace(forked.header, height=3)), (), {}).signed(miner_key)
    _assert_refused(ledger, forked, "height 3 does not follow height 1")


def test_append_refuses_a_wrong_height(ledger: Ledger, round_block: Any, miner_key: SigningKey) -> None:
    block = round_block(ledger)
    header = mine(dataclasses.replace(block.header, height=4))
    _assert_refused(ledger, Block(header, block.transactions, block.meta).signed(miner_key),
                    "height 4 does not follow height 2")


def test_append_refuses_bad_proof_of_work(ledger: Ledger, round_block: Any, miner_key: SigningKey) -> None:
    block = round_block(ledger)
    nonce = next(n for n in range(1000) if not meets_difficulty(block.header.with_nonce(n).hash(), 8))
    bad = Block(block.header.with_nonce(nonce), block.transactions, block.meta).signed(miner_key)
    assert bad.has_valid_signature()
    _assert_refused(ledger, bad, "proof of work")


def test_append_refuses_an_easier_difficulty(ledger: Ledger, round_block: Any, miner_key: SigningKey) -> None:
    block = round_block(ledger)
    easy = Block(mine(dataclasses.replace(block.header, difficulty=1)), block.transactions, block.meta)
    easy = easy.signed(miner_key)
    _assert_refused(ledger, easy, "difficulty 1 differs")


def test_append_refuses_an_unknown_member(ledger: Ledger, round_block: Any, keys: list[SigningKey]) -> None:
    stranger = SigningKey.from_seed_material("tests/chain/stranger")
    _assert_refused(ledger, round_block(ledger, signers=[keys[0], stranger]), "not a member")


def test_append_refuses_a_missing_update_blob(ledger: Ledger, round_block: Any) -> None:
    block = round_block(ledger, put_blobs=False)
    ledger.put_blob(b"model-3")
    _assert_refused(ledger, block, "update blob .* is not stored")


def test_append_refuses_a_missing_model_blob(ledger: Ledger, round_block: Any) -> None:
    block = round_block(ledger)
    os.unlink(ledger.blob_path(block.header.model_hash))
    _assert_refused(ledger, block, "model blob .* is not stored")


def _reblock(ledger: Ledger, block: Block, transactions: list[Transaction], miner_key: SigningKey) -> Block:
    """``block`` mined again, by the chain's own miner, with other transactions."""
    return make_block(
        prev=ledger.head, round=block.header.round, transactions=transactions, meta=block.meta,
        model_hash=block.header.model_hash, miner=miner_key, difficulty=8, time_ms=block.header.time_ms,
    )


def test_append_refuses_a_forged_signature(
    ledger: Ledger, round_block: Any, keys: list[SigningKey], miner_key: SigningKey
) -> None:
    block = round_block(ledger)
    tx = block.transactions[0]
    forged = dataclasses.replace(tx, signature=keys[1].sign(tx.signing_payload()))
    _assert_refused(
        ledger, _reblock(ledger, block, [forged, *block.transactions[1:]], miner_key),
        "transaction 0 .*signature does not match the client's public key",
    )


def test_append_refuses_two_transactions_from_one_client(
    ledger: Ledger, round_block: Any, miner_key: SigningKey
) -> None:
    block = round_block(ledger)
    txs = list(block.transactions)
    _assert_refused(ledger, _reblock(ledger, block, [*txs, txs[0]], miner_key), "same client")


def test_append_refuses_a_stale_base_or_wrong_round(
    ledger: Ledger, round_block: Any, keys: list[SigningKey], miner_key: SigningKey
) -> None:
    block = round_block(ledger)
    stale = dataclasses.replace(block.transactions[0], base_hash=ledger.block(1).hash).signed(keys[0])
    _assert_refused(ledger, _reblock(ledger, block, [stale], miner_key), "base hash")
    late = dataclasses.replace(block.transactions[0], round=2).signed(keys[0])
    _assert_refused(ledger, _reblock(ledger, block, [late], miner_key), "round 2 differs")


def test_append_refuses_a_tampered_merkle_root_or_meta(ledger: Ledger, round_block: Any) -> None:
    block = round_block(ledger)
    # The header and so the miner's signature are untouched: only the body changed.
    cut = Block(block.header, block.transactions[:2], block.meta, block.signature)
    assert cut.has_valid_signature()
    _assert_refused(ledger, cut, "Merkle root")
    _assert_refused(ledger, Block(block.header, block.transactions, {"trust": {}}, block.signature), "meta hash")


def test_a_leftover_tmp_file_is_ignored_by_a_reader_and_removed_by_a_writer(ledger: Ledger) -> None:
    leftover = ledger.path / "blocks" / ".tmp-abc123"
    leftover.write_bytes(b'{"half a block')
    blob_leftover = ledger.path / "blobs" / ".tmp-xyz"
    blob_leftover.write_bytes(b"half a blob")
    # A reader skips them and keeps them: they may be a writer's file at work.
    reopened = Ledger.open(ledger.path)
    assert reopened.height == 2
    assert leftover.read_bytes() == b'{"half a block'
    assert blob_leftover.read_bytes() == b"half a blob"
    # Only the next writer, holding the lock, deletes what a crash left behind.
    ledger.close()
    with Ledger.open_writer(ledger.path) as writer:
        assert writer.height == 2
        assert not leftover.exists()
        assert not blob_leftover.exists()


def test_open_names_the_first_bad_file(ledger: Ledger) -> None:
    name = block_file_name(ledger.block(1))
    path = ledger.path / "blocks" / name
    data = path.read_bytes()
    assert b'"num_samples":11' in data
    path.write_bytes(data.replace(b'"num_samples":11', b'"num_samples":12', 1))
    with pytest.raises(LedgerError, match="Merkle root") as info:
        Ledger.open(ledger.path)
    assert info.value.block == name


def test_open_refuses_an_orphan_and_a_misnamed_second_file(ledger: Ledger) -> None:
    blocks_dir = ledger.path / "blocks"
    middle = blocks_dir / block_file_name(ledger.block(1))
    data = middle.read_bytes()
    middle.unlink()
    with pytest.raises(LedgerError, match="orphan block.*previous block .* \\(height 1\\)") as info:
        Ledger.open(ledger.path)
    assert info.value.block == block_file_name(ledger.block(2))
    middle.write_bytes(data)
    copy = blocks_dir / f"00000001-{'0' * 64}.json"
    copy.write_bytes(data)
    with pytest.raises(LedgerError, match="not to the hash in its file name") as info:
        Ledger.open(ledger.path)
    assert info.value.block == copy.name


def test_open_refuses_a_stray_file_and_a_folder_without_blocks(ledger: Ledger, tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="not a ledger folder"):
        Ledger.open(tmp_path / "nothing")
    (ledger.path / "blocks" / "notes.txt").write_text("hi")
    with pytest.raises(LedgerError, match="unexpected file") as info:
        Ledger.open(ledger.path)
    assert info.value.block == "notes.txt"


def test_append_into_a_read_only_folder_raises_ledger_error(ledger: Ledger, round_block: Any) -> None:
    block = round_block(ledger)
    blocks_dir = ledger.path / "blocks"
    files = _block_files(ledger)
    blocks_dir.chmod(0o555)
    try:
        if os.access(blocks_dir, os.W_OK):
            pytest.skip("running as a user whom chmod does not stop from writing (root)")
        with pytest.raises(LedgerError, match="cannot write"):
            ledger.append(block)
        assert _block_files(ledger) == files
        assert ledger.height == 2
    finally:
        blocks_dir.chmod(0o755)


def test_a_folder_that_refuses_writes_raises_ledger_error(
    ledger: Ledger, round_block: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The read-only test above is skipped as root; this one fails the write the same way.
    block = round_block(ledger)
    files = _block_files(ledger)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(ledger_module.tempfile, "mkstemp", refuse)
    with pytest.raises(LedgerError, match="cannot write .*Permission denied.*writable") as info:
        ledger.append(block)
    assert info.value.block == block_file_name(block)
    monkeypatch.undo()
    assert _block_files(ledger) == files
    assert ledger.height == 2


def test_a_failed_write_leaves_no_partial_file(
    ledger: Ledger, round_block: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = round_block(ledger)
    files = _block_files(ledger)

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ledger_module.os, "fsync", disk_full)
    with pytest.raises(LedgerError, match="No space left on device"):
        ledger.append(block)
    monkeypatch.undo()
    assert _block_files(ledger) == files
    assert ledger.height == 2
    ledger.append(block)
    assert ledger.height == 3


def test_a_failure_after_the_rename_removes_the_block_file(
    ledger: Ledger, round_block: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = round_block(ledger)
    files = _block_files(ledger)

    def fail(directory: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ledger_module, "_fsync_directory", fail)
    with pytest.raises(LedgerError, match="Input/output error"):
        ledger.append(block)
    assert _block_files(ledger) == files
    assert Ledger.open(ledger.path).height == 2
