from __future__ import annotations

import hashlib

import pytest

from torchchain.chain.block import BLOCK_VERSION, ZERO_HASH, BlockHeader
from torchchain.chain.block import mine_header as mine
from torchchain.chain.pow import block_work, meets_difficulty, mine_nonce
from torchchain.errors import LedgerError


def _header(difficulty: int, time_ms: int = 1) -> BlockHeader:
    return BlockHeader(
        version=BLOCK_VERSION,
        height=1,
        prev_hash=ZERO_HASH,
        round=1,
        time_ms=time_ms,
        merkle_root="1" * 64,
        model_hash="2" * 64,
        config_hash="3" * 64,
        meta_hash="4" * 64,
        difficulty=difficulty,
        miner="5" * 64,
        nonce=0,
    )


@pytest.mark.parametrize(
    ("block_hash", "bits", "expected"),
    [
        ("f" * 64, 0, True),
        ("f" * 64, 1, False),
        ("7" + "f" * 63, 1, True),
        ("7" + "f" * 63, 2, False),
        ("00" + "f" * 62, 8, True),
        ("00" + "f" * 62, 9, False),
        ("007f" + "f" * 60, 9, True),
        ("0" * 64, 256, True),
        ("0" * 63 + "1", 256, False),
    ],
)
def test_meets_difficulty_counts_leading_zero_bits(block_hash: str, bits: int, expected: bool) -> None:
    assert meets_difficulty(block_hash, bits) is expected


@pytest.mark.parametrize(("block_hash", "bits"), [("0" * 63, 1), ("0" * 64, -1), ("0" * 64, 257), ("0" * 64, True)])
def test_meets_difficulty_refuses_bad_arguments(block_hash: str, bits: int) -> None:
    with pytest.raises(ValueError):
        meets_difficulty(block_hash, bits)


@pytest.mark.parametrize("bits", [1, 8, 12])
def test_mine_finds_the_first_nonce_that_meets_the_difficulty(bits: int) -> None:
    header = _header(bits)
    mined = mine(header)
    assert mined.hash() == hashlib.sha256(header.prefix_bytes() + mined.nonce.to_bytes(8, "big")).hexdigest()
    assert meets_difficulty(mined.hash(), bits)
    assert all(not meets_difficulty(header.with_nonce(n).hash(), bits) for n in range(mined.nonce))
    assert mined.with_nonce(0) == header.with_nonce(0)


def test_mine_starts_at_start_nonce() -> None:
    header = _header(8)
    first = mine(header)
    later = mine(header, start_nonce=first.nonce + 1)
    assert later.nonce > first.nonce
    assert meets_difficulty(later.hash(), 8)


def test_mine_at_difficulty_zero_takes_the_start_nonce() -> None:
    assert mine(_header(0), start_nonce=42).nonce == 42


@pytest.mark.parametrize("start", [-1, 2**64])
def test_mine_refuses_a_start_nonce_out_of_range(start: int) -> None:
    with pytest.raises(ValueError, match="start_nonce"):
        mine(_header(8), start_nonce=start)


def test_block_work_doubles_per_bit() -> None:
    assert [block_work(b) for b in (0, 1, 8, 16)] == [1, 2, 256, 65536]


@pytest.mark.parametrize("bits", [0, 1, 8, 12])
def test_mine_nonce_works_on_bytes_and_finds_the_first_nonce(bits: int) -> None:
    prefix = b"any bytes at all"

    def digest(nonce: int) -> str:
        return hashlib.sha256(prefix + nonce.to_bytes(8, "big")).hexdigest()

    nonce = mine_nonce(prefix, bits)
    assert meets_difficulty(digest(nonce), bits)
    assert all(not meets_difficulty(digest(n), bits) for n in range(nonce))
    assert mine_nonce(prefix, bits, start_nonce=nonce) == nonce


def test_mine_header_is_mine_nonce_over_the_prefix_bytes() -> None:
    header = _header(8)
    assert mine(header).nonce == mine_nonce(header.prefix_bytes(), 8)
    first = mine(header).nonce
    assert mine(header, start_nonce=first + 1).nonce == mine_nonce(header.prefix_bytes(), 8, start_nonce=first + 1)


@pytest.mark.parametrize(("bits", "start"), [(-1, 0), (257, 0), (True, 0), (8, -1), (8, 2**64), (8, 1.0)])
def test_mine_nonce_refuses_bad_arguments(bits: int, start: int) -> None:
    with pytest.raises(ValueError):
        mine_nonce(b"x", bits, start_nonce=start)


def test_mine_nonce_says_when_no_nonce_is_left() -> None:
    # 32 bits from the very last nonce: one try, which fails unless the hash is extraordinary.
    prefix = b"torchchain"
    last = 2**64 - 1
    assert not meets_difficulty(hashlib.sha256(prefix + last.to_bytes(8, "big")).hexdigest(), 32)
    with pytest.raises(LedgerError, match="no nonce"):
        mine_nonce(prefix, 32, start_nonce=last)


def test_pow_does_not_import_the_block_module() -> None:
    # mine_nonce works on bytes so that pow and block do not import each other.
    import ast
    import inspect

    import torchchain.chain.pow as pow_module

    imported = set()
    for node in ast.walk(ast.parse(inspect.getsource(pow_module))):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not {m for m in imported if m.startswith("torchchain.chain")}, imported
