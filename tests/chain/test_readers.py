"""Readers never write, one writer at a time, and reading streams.

``Ledger.open`` and ``verify_ledger`` may run beside a training run (``torchchain inspect``,
an audit): they must not touch the folder, least of all the ``.tmp-`` files of a writer at
work. Only a writer (``Ledger.create``, ``Ledger.open_writer``) holds ``<path>/.lock``, and a
second writer on the same folder is refused. Reading keeps headers only, never a chain's worth
of block bodies.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest

import torchchain.chain.ledger as ledger_module
from torchchain.chain.block import Block, BlockHeader
from torchchain.chain.fork import BlockTree
from torchchain.chain.ledger import LOCK_FILE, Ledger, block_file_name, load_block_tree
from torchchain.chain.verify import verify_ledger
from torchchain.errors import LedgerError

ANOTHER_WRITER = "another process is writing the ledger"


def _snapshot(path: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``path``: its bytes and modification time (ns)."""
    found = {}
    for root, _, files in os.walk(path):
        for name in files:
            file = Path(root) / name
            found[str(file.relative_to(path))] = (file.read_bytes(), file.stat().st_mtime_ns)
    return found


def _plant_leftovers(path: Path) -> list[Path]:
    leftovers = [path / "blocks" / ".tmp-x", path / "blobs" / ".tmp-x"]
    for leftover in leftovers:
        leftover.write_bytes(b"a writer is half way through this file")
    return leftovers


# ---------------------------------------------------------------- readers never write


@pytest.mark.parametrize("read", [Ledger.open, verify_ledger], ids=["Ledger.open", "verify_ledger"])
def test_a_reader_leaves_tmp_files_and_everything_else_untouched(ledger: Ledger, read: Any) -> None:
    leftovers = _plant_leftovers(ledger.path)
    before = _snapshot(ledger.path)
    result = read(ledger.path)
    assert (result.height, result.head_hash if isinstance(result, Ledger) else result.head) == (2, ledger.head_hash)
    assert _snapshot(ledger.path) == before
    assert all(leftover.exists() for leftover in leftovers)


@pytest.mark.parametrize("read", [Ledger.open, verify_ledger], ids=["Ledger.open", "verify_ledger"])
def test_a_reader_makes_no_write_call_and_takes_no_lock(
    ledger: Ledger, read: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plant_leftovers(ledger.path)
    ledger.close()
    (ledger.path / LOCK_FILE).unlink()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a reader wrote: {args}")

    monkeypatch.setattr(ledger_module, "write_atomic", refuse)
    monkeypatch.setattr(ledger_module.os, "unlink", refuse)
    monkeypatch.setattr(ledger_module.os, "remove", refuse)
    monkeypatch.setattr(ledger_module.os, "replace", refuse)
    monkeypatch.setattr(ledger_module.fcntl, "flock", refuse)
    read(ledger.path)
    monkeypatch.undo()
    assert not (ledger.path / LOCK_FILE).exists()


def test_a_reader_works_while_a_writer_holds_the_lock(ledger: Ledger, round_block: Any) -> None:
    assert ledger.writable
    reader = Ledger.open(ledger.path)
    assert not reader.writable and "reader" in repr(reader) and "writer" in repr(ledger)
    assert reader.head_hash == ledger.head_hash
    assert verify_ledger(ledger.path).head == ledger.head_hash
    # The writer goes on; a reader opened afterwards sees the new block.
    block = round_block(ledger)
    ledger.append(block)
    assert Ledger.open(ledger.path).head_hash == block.hash
    assert verify_ledger(ledger.path, expect_head=block.hash).height == 3
    reader.close()  # a reader holds nothing; closing it releases nothing
    with pytest.raises(LedgerError, match=ANOTHER_WRITER):
        Ledger.open_writer(ledger.path)


def test_a_reader_cannot_append_or_store_blobs(ledger: Ledger, round_block: Any) -> None:
    block = round_block(ledger)
    reader = Ledger.open(ledger.path)
    blobs = sorted(os.listdir(ledger.path / "blobs"))
    with pytest.raises(LedgerError, match="cannot append a block: .* was opened for reading"):
        reader.append(block)
    with pytest.raises(LedgerError, match="cannot store a blob: .* was opened for reading"):
        reader.put_blob(b"new bytes")
    assert sorted(os.listdir(ledger.path / "blobs")) == blobs
    assert not (ledger.path / "blocks" / block_file_name(block)).exists()
    assert reader.height == 2


# ---------------------------------------------------------------- one writer at a time


def test_a_second_writer_in_the_same_process_is_refused(ledger: Ledger, genesis: Block, tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match=ANOTHER_WRITER):
        Ledger.open_writer(ledger.path)
    # Creating a ledger in a folder another writer holds is refused too, even with no blocks yet.
    fresh = tmp_path / "fresh"
    with Ledger.create(fresh, genesis, blobs=[b"model-0"]) as first:
        (fresh / "blocks" / block_file_name(genesis)).unlink()
        with pytest.raises(LedgerError, match=ANOTHER_WRITER):
            Ledger.create(fresh, genesis)
        assert first.writable


def test_a_second_writer_in_another_process_is_refused(ledger: Ledger) -> None:
    code = (
        "import sys\n"
        "from torchchain.chain.ledger import Ledger\n"
        "from torchchain.errors import LedgerError\n"
        "try:\n"
        "    Ledger.open_writer(sys.argv[1])\n"
        "except LedgerError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(ledger.path)], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    assert ANOTHER_WRITER in done.stdout


def test_after_close_a_new_writer_succeeds(ledger: Ledger, round_block: Any) -> None:
    ledger.close()
    ledger.close()  # idempotent
    assert not ledger.writable
    with pytest.raises(LedgerError, match="opened for reading"):
        ledger.put_blob(b"x")
    with Ledger.open_writer(ledger.path) as writer:
        assert writer.writable and writer.height == 2
        block = round_block(writer)
        writer.append(block)
    # The context manager released the lock.
    assert not writer.writable
    with Ledger.open_writer(ledger.path) as again:
        assert again.head_hash == block.hash


def test_a_failed_open_writer_releases_the_lock(ledger: Ledger) -> None:
    ledger.close()
    path = ledger.path / "blocks" / block_file_name(ledger.head)
    original = path.read_bytes()
    path.write_bytes(original.replace(b'"round":2', b'"round":3', 1))
    with pytest.raises(LedgerError) as info:
        Ledger.open_writer(ledger.path)
    assert info.value.block == path.name
    path.write_bytes(original)
    with Ledger.open_writer(ledger.path) as writer:
        assert writer.height == 2


# ---------------------------------------------------------------- reading streams


def test_load_block_tree_keeps_headers_only(ledger: Ledger, round_block: Any) -> None:
    for _ in range(3):
        ledger.append(round_block(ledger))
    genesis, tree = load_block_tree(ledger.path)
    assert genesis == ledger.genesis
    assert isinstance(tree, BlockTree)
    assert tree.chain() == [b.hash for b in ledger.blocks()]
    for block in ledger.blocks():
        header = tree.get(block.hash)
        assert type(header) is BlockHeader and header == block.header
    assert type(tree.head) is BlockHeader
    # Nothing the tree holds is a Block (a body with transactions and meta).
    held = [value for attribute in vars(tree).values() for value in _values(attribute)]
    assert held and not any(isinstance(value, Block) for value in held)


def _values(container: Any) -> list[Any]:
    if isinstance(container, dict):
        return [*container.keys(), *container.values()]
    if isinstance(container, (list, tuple, set)):
        return list(container)
    return [container]


@pytest.mark.parametrize("read", [Ledger.open, verify_ledger], ids=["Ledger.open", "verify_ledger"])
def test_reading_a_ledger_holds_one_block_body_at_a_time(
    ledger: Ledger, round_block: Any, read: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(4):
        ledger.append(round_block(ledger))
    genesis_hash = ledger.genesis.hash
    alive: list[weakref.ref[Block]] = []
    most_alive = 0
    real_read = ledger_module.read_block_file

    def counting_read(*args: Any, **kwargs: Any) -> Block:
        nonlocal most_alive
        gc.collect()
        most_alive = max(most_alive, sum(1 for ref in alive if ref() is not None))
        block = real_read(*args, **kwargs)
        if block.hash != genesis_hash:
            alive.append(weakref.ref(block))
        return block

    monkeypatch.setattr(ledger_module, "read_block_file", counting_read)
    read(ledger.path)
    assert len(alive) == 6  # every round block was read...
    assert most_alive == 0  # ...and dropped before the next one was read
