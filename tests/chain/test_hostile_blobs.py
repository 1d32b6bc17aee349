"""Hostile blob files: whatever a blob file holds, or whatever sits at its name, the ledger
raises :class:`LedgerError` and nothing else, without hanging or reading unbounded data.

``verify_ledger`` must name the first block (by height, then hash) that refers to the blob;
``Ledger.get_blob`` must refuse it. The ledger is the ``folder`` fixture (conftest.py), mutated
in place and restored after each example.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from torchchain.chain.ledger import MAX_BLOB_BYTES, Ledger, block_file_name
from torchchain.chain.verify import verify_ledger
from torchchain.errors import LedgerError

# Examples per property; TORCHCHAIN_FUZZ_EXAMPLES=2000 runs a thorough search (a few minutes).
EXAMPLES = int(os.environ.get("TORCHCHAIN_FUZZ_EXAMPLES", "80"))


@pytest.fixture(scope="module")
def first_users(folder: Path) -> list[tuple[str, str]]:
    """Every blob digest with the file name of the first block that refers to it."""
    found: dict[str, str] = {}
    ledger = Ledger.open(folder)
    blocks = sorted(
        (ledger.block_by_hash(name[9:-5]) for name in os.listdir(folder / "blocks")),
        key=lambda b: (b.header.height, b.hash),
    )
    for block in blocks:
        for digest in [block.header.model_hash] + [tx.update_hash for tx in block.transactions]:
            found.setdefault(digest, block_file_name(block))
    return sorted(found.items())


@contextlib.contextmanager
def _blob_replaced(path: Path, make: Callable[[], None]) -> Iterator[None]:
    original = path.read_bytes()
    path.unlink()
    make()
    try:
        yield
    finally:
        if path.is_dir() and not path.is_symlink():
            os.rmdir(path)
        else:
            path.unlink()
        path.write_bytes(original)


def _assert_refused(folder: Path, digest: str, first_user: str) -> None:
    with pytest.raises(LedgerError) as info:
        verify_ledger(folder)
    assert info.value.block == first_user, str(info.value)
    assert digest[:12] in info.value.reason
    ledger = Ledger.open(folder)  # opening reads no blob, so it still works
    with pytest.raises(LedgerError, match=digest[:12]):
        ledger.get_blob(digest)


def _check_mutation(folder: Path, users: list[tuple[str, str]], which: int, mutate: Callable[[bytes], bytes]) -> None:
    digest, first_user = users[which % len(users)]
    path = folder / "blobs" / digest
    mutated = mutate(path.read_bytes())
    assume(mutated != path.read_bytes())
    with _blob_replaced(path, lambda: path.write_bytes(mutated)):
        _assert_refused(folder, digest, first_user)


def test_every_blob_of_the_ledger_is_checked(folder: Path, first_users: list[tuple[str, str]]) -> None:
    # 4 models, 3 + 2 + 2 updates.
    assert len(first_users) == 11
    assert verify_ledger(folder).blobs_checked == 11


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    which=st.integers(0, 100),
    flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 7)), min_size=1, max_size=4),
)
def test_bit_flips(folder: Path, first_users: list[tuple[str, str]], which: int, flips: list[tuple[int, int]]) -> None:
    def mutate(data: bytes) -> bytes:
        out = bytearray(data)
        for position, bit in flips:
            out[position % len(out)] ^= 1 << bit
        return bytes(out)

    _check_mutation(folder, first_users, which, mutate)


@settings(max_examples=EXAMPLES, deadline=None)
@given(which=st.integers(0, 100), keep=st.integers(0, 1 << 16), tail=st.binary(max_size=32))
def test_truncation_and_extension(
    folder: Path, first_users: list[tuple[str, str]], which: int, keep: int, tail: bytes
) -> None:
    _check_mutation(folder, first_users, which, lambda data: data[: keep % (len(data) + 1)] + tail)


@settings(max_examples=EXAMPLES, deadline=None)
@given(which=st.integers(0, 100), junk=st.binary(max_size=128))
def test_arbitrary_content(folder: Path, first_users: list[tuple[str, str]], which: int, junk: bytes) -> None:
    _check_mutation(folder, first_users, which, lambda data: junk)


@settings(max_examples=max(10, EXAMPLES // 10), deadline=None)
@given(order=st.permutations(range(11)))
def test_swapped_blobs(folder: Path, first_users: list[tuple[str, str]], order: list[int]) -> None:
    paths = [folder / "blobs" / digest for digest, _ in first_users]
    contents = [p.read_bytes() for p in paths]
    moved = [i for i in range(len(paths)) if order[i] != i]
    assume(moved)
    try:
        for path, i in zip(paths, order):
            path.write_bytes(contents[i])
        with pytest.raises(LedgerError, match="corrupt") as info:
            verify_ledger(folder)
        assert info.value.block in {first_users[i][1] for i in moved}
    finally:
        for path, content in zip(paths, contents):
            path.write_bytes(content)


@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "dangling link"])
def test_something_other_than_a_file_at_a_blob_name_is_refused(
    folder: Path, first_users: list[tuple[str, str]], kind: str
) -> None:
    # Before the fix, get_blob read /dev/zero without end, and verify called all of these "missing".
    digest, first_user = first_users[3]
    path = folder / "blobs" / digest
    makers = {
        "fifo": lambda: os.mkfifo(path),
        "device": lambda: os.symlink("/dev/zero", path),
        "folder": lambda: os.mkdir(path),
        "dangling link": lambda: os.symlink(folder / "nowhere", path),
    }
    with _blob_replaced(path, makers[kind]):
        _assert_refused(folder, digest, first_user)


def test_an_oversized_blob_is_refused_from_its_size(folder: Path, first_users: list[tuple[str, str]]) -> None:
    digest, first_user = first_users[5]
    path = folder / "blobs" / digest

    def sparse() -> None:
        # Over the limit on disk without taking the space; hashing it would read 512 MiB.
        with open(path, "wb") as f:
            f.truncate(MAX_BLOB_BYTES + 1)

    with _blob_replaced(path, sparse):
        with pytest.raises(LedgerError, match=f"{MAX_BLOB_BYTES + 1} bytes is over the limit") as info:
            verify_ledger(folder)
        assert info.value.block == first_user
        with pytest.raises(LedgerError, match="over the limit"):
            Ledger.open(folder).get_blob(digest, max_bytes=1024)
