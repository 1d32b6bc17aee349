"""Hostile block files: whatever bytes a block file holds, reading the ledger raises
:class:`LedgerError` naming that file, and nothing else (no other exception, no hang).

The ledger under attack is the ``folder`` fixture (conftest.py): a fork with genesis, ``b1``
and two blocks at height 2. Each example mutates one or more files in place and restores them
afterwards; every property runs ``Ledger.open`` and ``verify_ledger``, so both readers face
every mutation.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from torchchain.chain.block import BLOCK_VERSION, MAX_BLOCK_BYTES, BlockHeader, make_block, merkle_root
from torchchain.chain.block import mine_header as mine
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.encoding import canonical_json
from torchchain.chain.ledger import Ledger, block_file_name
from torchchain.chain.verify import verify_ledger
from torchchain.errors import LedgerError

# Examples per property; TORCHCHAIN_FUZZ_EXAMPLES=2000 runs a thorough search (a few minutes).
EXAMPLES = int(os.environ.get("TORCHCHAIN_FUZZ_EXAMPLES", "80"))

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# Values chosen to break parsers rather than schemas: huge numbers, long strings, deep nesting.
extreme_values = st.sampled_from(
    [2**63, 2**64, -1, -(2**63), 10**4000, 1e308, -0.0, 0.5, True, "", "x" * 100_000, [0] * 10_000, {}, [], None]
)


def _names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder / "blocks"))


@contextlib.contextmanager
def _replaced(path: Path, data: bytes) -> Iterator[None]:
    original = path.read_bytes()
    path.write_bytes(data)
    try:
        yield
    finally:
        path.write_bytes(original)


def _assert_refused(folder: Path, names: set[str]) -> None:
    """Both readers raise LedgerError (any other exception fails the test) naming one of ``names``."""
    for load in (Ledger.open, verify_ledger):
        with pytest.raises(LedgerError) as info:
            load(folder)
        assert info.value.block in names, f"{load.__name__}: {info.value}"


def _check_mutation(folder: Path, which: int, mutate: Callable[[bytes], bytes]) -> None:
    name = _names(folder)[which % 4]
    path = folder / "blocks" / name
    original = path.read_bytes()
    mutated = mutate(original)
    assume(mutated != original)
    with _replaced(path, mutated):
        _assert_refused(folder, {name})


def test_the_ledger_under_attack_is_valid(folder: Path) -> None:
    assert len(_names(folder)) == 4
    assert verify_ledger(folder).forks == 1
    assert Ledger.open(folder).config["strategy"] == {"name": "krum", "f": 1}


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    which=st.integers(0, 3),
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 7)), min_size=1, max_size=8),
)
def test_bit_flips(folder: Path, which: int, flips: list[tuple[int, int]]) -> None:
    def mutate(data: bytes) -> bytes:
        out = bytearray(data)
        for position, bit in flips:
            out[position % len(out)] ^= 1 << bit
        return bytes(out)

    _check_mutation(folder, which, mutate)


@settings(max_examples=EXAMPLES, deadline=None)
@given(which=st.integers(0, 3), keep=st.integers(0, 1 << 20))
def test_truncation(folder: Path, which: int, keep: int) -> None:
    _check_mutation(folder, which, lambda data: data[: keep % len(data)])


@settings(max_examples=EXAMPLES, deadline=None)
@given(which=st.integers(0, 3), at=st.integers(0, 1 << 20), junk=st.binary(min_size=1, max_size=64))
def test_inserted_bytes(folder: Path, which: int, at: int, junk: bytes) -> None:
    _check_mutation(folder, which, lambda data: data[: at % (len(data) + 1)] + junk + data[at % (len(data) + 1) :])


def _locations(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in ``doc``, walked without recursion."""
    found: list[tuple[Any, Any]] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        for key in keys:
            found.append((node, key))
            stack.append(node[key])
    return found


def _encode(doc: Any, canonical: bool) -> bytes:
    # Non-canonical encodings (spaces, insertion order) must be refused as well.
    return canonical_json(doc) if canonical else json.dumps(doc).encode()


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    which=st.integers(0, 3),
    where=st.integers(0, 10_000),
    key=st.text(max_size=12),
    value=json_values,
    canonical=st.booleans(),
)
def test_inserted_json_fields(
    folder: Path, which: int, where: int, key: str, value: Any, canonical: bool
) -> None:
    def mutate(data: bytes) -> bytes:
        doc = json.loads(data)
        objects = [doc] + [c[k] for c, k in _locations(doc) if isinstance(c[k], dict)]
        objects[where % len(objects)][key] = value
        return _encode(doc, canonical)

    _check_mutation(folder, which, mutate)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    which=st.integers(0, 3),
    where=st.integers(0, 10_000),
    value=json_values | extreme_values,
    canonical=st.booleans(),
)
def test_wrong_types_and_values_for_every_field(
    folder: Path, which: int, where: int, value: Any, canonical: bool
) -> None:
    def mutate(data: bytes) -> bytes:
        doc = json.loads(data)
        container, key = _locations(doc)[where % len(_locations(doc))]
        container[key] = value
        return _encode(doc, canonical)

    _check_mutation(folder, which, mutate)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    which=st.integers(0, 3),
    where=st.integers(0, 10_000),
    depth=st.integers(1, 100_000),
    kind=st.sampled_from("[{"),
)
def test_deeply_nested_json(folder: Path, which: int, where: int, depth: int, kind: str) -> None:
    opener, closer = (b"[", b"]") if kind == "[" else (b'{"a":', b"}")

    def mutate(data: bytes) -> bytes:
        doc = json.loads(data)
        container, key = _locations(doc)[where % len(_locations(doc))]
        container[key] = "NESTED"
        return canonical_json(doc).replace(b'"NESTED"', opener * depth + b"0" * (kind == "{") + closer * depth, 1)

    _check_mutation(folder, which, mutate)


@settings(max_examples=EXAMPLES, deadline=None)
@given(which=st.integers(1, 3), data=st.data())
def test_duplicated_reordered_and_dropped_transactions(folder: Path, which: int, data: st.DataObject) -> None:
    # Genesis (index 0) holds no transactions; the others hold 2 or 3.
    def mutate(raw: bytes) -> bytes:
        doc = json.loads(raw)
        txs = doc["transactions"]
        action = data.draw(st.sampled_from(["duplicate", "reorder", "drop"]))
        if action == "duplicate":
            txs.insert(data.draw(st.integers(0, len(txs))), txs[data.draw(st.integers(0, len(txs) - 1))])
        elif action == "reorder":
            doc["transactions"] = data.draw(st.permutations(txs))
        else:
            del txs[data.draw(st.integers(0, len(txs) - 1))]
        return canonical_json(doc)

    _check_mutation(folder, which, mutate)


@settings(max_examples=max(30, EXAMPLES // 10), deadline=None)
@given(order=st.permutations(range(4)))
def test_swapped_block_files(folder: Path, order: list[int]) -> None:
    names = _names(folder)
    contents = [(folder / "blocks" / n).read_bytes() for n in names]
    moved = {names[i] for i in range(4) if order[i] != i}
    assume(moved)
    try:
        for i, name in enumerate(names):
            (folder / "blocks" / name).write_bytes(contents[order[i]])
        _assert_refused(folder, moved)
    finally:
        for name, content in zip(names, contents):
            (folder / "blocks" / name).write_bytes(content)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    which=st.integers(0, 3),
    doc=st.dictionaries(
        st.sampled_from(["header", "transactions", "meta", "signature"]) | st.text(max_size=8), json_values, max_size=4
    ),
)
def test_arbitrary_json_objects(folder: Path, which: int, doc: dict[str, Any]) -> None:
    _check_mutation(folder, which, lambda data: canonical_json(doc))


@settings(max_examples=EXAMPLES, deadline=None)
@given(which=st.integers(0, 3), junk=st.binary(max_size=256))
def test_arbitrary_bytes(folder: Path, which: int, junk: bytes) -> None:
    _check_mutation(folder, which, lambda data: junk)


def test_an_oversized_block_file_is_refused_from_its_size(folder: Path) -> None:
    name = _names(folder)[1]
    path = folder / "blocks" / name
    original = path.read_bytes()
    try:
        # A sparse file: over the limit on disk without taking the space. The message is the
        # one of the size check made before reading ("grew ... while being read" otherwise).
        with open(path, "r+b") as f:
            f.truncate(MAX_BLOCK_BYTES + 1)
        for load in (Ledger.open, verify_ledger):
            with pytest.raises(LedgerError, match=f"{MAX_BLOCK_BYTES + 1} bytes is over the limit") as info:
                load(folder)
            assert info.value.block == name
    finally:
        path.write_bytes(original)


def test_a_fifo_a_device_and_a_folder_in_place_of_a_block_file_are_refused(folder: Path) -> None:
    name = _names(folder)[2]
    path = folder / "blocks" / name
    original = path.read_bytes()
    makers = {
        "fifo": lambda: os.mkfifo(path),
        "device": lambda: os.symlink("/dev/zero", path),
        "folder": lambda: os.mkdir(path),
    }
    try:
        for kind, make in makers.items():
            path.unlink()
            make()
            # Before the fix a FIFO blocked open() forever and /dev/zero was read without end.
            _assert_refused(folder, {name})
            (os.rmdir if kind == "folder" else os.unlink)(path)
            path.write_bytes(original)
    finally:
        if not path.is_file():
            with contextlib.suppress(OSError):
                os.rmdir(path)
            with contextlib.suppress(OSError):
                os.unlink(path)
            path.write_bytes(original)


def test_a_file_name_that_is_not_printable_is_named_safely(folder: Path) -> None:
    odd = os.fsdecode(b"\xff\x1b[31m.json")
    (folder / "blocks" / odd).write_bytes(b"{}")
    try:
        for load in (Ledger.open, verify_ledger):
            with pytest.raises(LedgerError, match="unexpected file") as info:
                load(folder)
            assert info.value.block == ascii(odd)
            str(info.value).encode("ascii")
    finally:
        os.unlink(folder / "blocks" / odd)


def _deep_genesis_file(keys: list[SigningKey], miner_key: SigningKey, depth: int) -> tuple[str, bytes]:
    """A genesis block file whose config nests ``depth`` lists deep, with every hash right and
    signed by ``miner_key``, the one miner it lists.

    The canonical bytes are written out by hand, so building them needs no recursion at all.
    """
    config = b'{"deep":' + b"[" * depth + b"]" * depth + b"}"
    members = sorted(k.public_key for k in keys)
    miners = [miner_key.public_key]
    meta = (
        b'{"config":' + config + b',"members":' + canonical_json(members)
        + b',"miners":' + canonical_json(miners) + b"}"
    )
    header = mine(
        BlockHeader(
            version=BLOCK_VERSION, height=0, prev_hash="0" * 64, round=0, time_ms=0, merkle_root=merkle_root([]),
            model_hash=sha256_hex(b"model-0"), config_hash=sha256_hex(config), meta_hash=sha256_hex(meta),
            difficulty=4, miner=miner_key.public_key, nonce=0,
        )
    )
    signature = miner_key.sign(header.signing_payload())
    data = (
        b'{"header":' + canonical_json(header.to_dict()) + b',"meta":' + meta
        + b',"signature":"' + signature.encode() + b'","transactions":[]}'
    )
    return f"00000000-{header.hash()}.json", data


def _single_genesis_folder(path: Path, name: str, data: bytes) -> Path:
    (path / "blocks").mkdir(parents=True)
    (path / "blobs").mkdir()
    (path / "blobs" / sha256_hex(b"model-0")).write_bytes(b"model-0")
    (path / "blocks" / name).write_bytes(data)
    return path


@pytest.mark.parametrize("depth", [40, 500, 5_000, 100_000])
def test_a_correctly_hashed_genesis_with_a_deeply_nested_config_is_refused(
    tmp_path: Path, keys: list[SigningKey], miner_key: SigningKey, depth: int
) -> None:
    name, data = _deep_genesis_file(keys, miner_key, depth)
    folder = _single_genesis_folder(tmp_path, name, data)
    for load in (Ledger.open, verify_ledger):
        with pytest.raises(LedgerError, match="nest deeper|not acceptable JSON") as info:
            load(folder)
        assert info.value.block == name


def test_no_nesting_depth_slips_between_the_decoder_and_the_encoder(
    tmp_path: Path, keys: list[SigningKey], miner_key: SigningKey
) -> None:
    # A regression test: the decoder accepted a depth a few levels under Python's recursion
    # limit that re-encoding the block then exceeded, so Ledger.open and verify_ledger raised
    # RecursionError. The window is a few levels wide and moves with the caller's stack depth,
    # hence the sweep over every depth up to the limit.
    for depth in range(500, sys.getrecursionlimit() + 10):
        name, data = _deep_genesis_file(keys, miner_key, depth)
        folder = _single_genesis_folder(tmp_path / str(depth), name, data)
        for load in (Ledger.open, verify_ledger):
            with pytest.raises(LedgerError) as info:
                load(folder)
            assert info.value.block == name


def test_a_genesis_config_within_the_nesting_limit_is_accepted(
    tmp_path: Path, keys: list[SigningKey], miner_key: SigningKey
) -> None:
    name, data = _deep_genesis_file(keys, miner_key, 20)
    folder = _single_genesis_folder(tmp_path, name, data)
    assert verify_ledger(folder).height == 0
    assert block_file_name(Ledger.open(folder).genesis) == name


def test_a_block_with_a_duplicated_transaction_mined_correctly_is_refused(
    folder: Path, child_block: Callable[..., Any], keys: list[SigningKey], miner_key: SigningKey
) -> None:
    with Ledger.open_writer(folder) as ledger:  # child_block stores its blobs
        honest = child_block(ledger, ledger.block(1), "dup", signers=keys[:2])
        b1 = ledger.block(1)
    bad = make_block(
        prev=b1, round=2, transactions=[*honest.transactions, honest.transactions[0]],
        meta=honest.meta, model_hash=honest.header.model_hash, miner=miner_key, difficulty=8,
        time_ms=honest.header.time_ms,
    )
    assert bad.has_valid_signature()
    path = folder / "blocks" / block_file_name(bad)
    path.write_bytes(bad.to_bytes())
    try:
        with pytest.raises(LedgerError, match="same client") as info:
            verify_ledger(folder)
        assert info.value.block == path.name
    finally:
        path.unlink()
