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


# --- mining with several worker processes -------------------------------------------------------


@pytest.fixture
def parallel_at_any_difficulty(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lets ``workers > 1`` start processes even at the small difficulties that keep tests fast
    (by default those are searched in the calling process)."""
    import torchchain.chain.pow as pow_module

    monkeypatch.setattr(pow_module, "_PARALLEL_MIN_BITS", 0)


@pytest.mark.usefixtures("parallel_at_any_difficulty")
@pytest.mark.parametrize(("bits", "time_ms"), [(8, 1), (10, 2), (12, 3), (13, 4), (14, 5)])
def test_several_workers_find_the_same_nonce_as_one(bits: int, time_ms: int) -> None:
    prefix = _header(bits, time_ms).prefix_bytes()
    single = mine_nonce(prefix, bits)
    assert mine_nonce(prefix, bits, workers=2) == single
    assert mine_nonce(prefix, bits, workers=3) == single


@pytest.mark.usefixtures("parallel_at_any_difficulty")
def test_mine_header_with_workers_gives_the_same_block() -> None:
    header = _header(12, time_ms=6)
    assert mine(header, workers=4) == mine(header)


@pytest.mark.usefixtures("parallel_at_any_difficulty")
@pytest.mark.parametrize("offset", [1, 200, 256, 257, 5000])
def test_several_workers_honour_start_nonce(offset: int) -> None:
    # Starts inside a 256-nonce batch, on a batch boundary and after the first nonce that works;
    # the search must neither skip the start's batch nor return a nonce below the start.
    bits = 10
    prefix = _header(bits, time_ms=7).prefix_bytes()
    first = mine_nonce(prefix, bits)
    start = first + offset
    single = mine_nonce(prefix, bits, start_nonce=start)
    assert single >= start
    assert mine_nonce(prefix, bits, start_nonce=start, workers=2) == single
    assert mine_nonce(prefix, bits, start_nonce=start, workers=5) == single
    # A start on the nonce itself returns it.
    assert mine_nonce(prefix, bits, start_nonce=single, workers=3) == single


@pytest.mark.usefixtures("parallel_at_any_difficulty")
def test_several_workers_at_the_top_of_the_nonce_range() -> None:
    prefix = b"torchchain"
    # Workers whose batches would lie past 2**64 - 1 have nothing to search.
    with pytest.raises(LedgerError, match="no nonce"):
        mine_nonce(prefix, 32, start_nonce=2**64 - 1, workers=4)
    start = 2**64 - 2048
    assert mine_nonce(prefix, 4, start_nonce=start, workers=3) == mine_nonce(prefix, 4, start_nonce=start)


def test_workers_at_the_default_threshold_find_the_same_nonce() -> None:
    # Unpatched: 18 bits is the smallest difficulty at which workers > 1 start processes.
    import torchchain.chain.pow as pow_module

    bits = pow_module._PARALLEL_MIN_BITS
    prefix = _header(bits, time_ms=8).prefix_bytes()
    assert mine_nonce(prefix, bits, workers=2) == mine_nonce(prefix, bits)


def test_small_difficulties_are_mined_in_the_calling_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchchain.chain.pow as pow_module

    def no_processes(*args: object) -> None:
        raise AssertionError("started worker processes for a small difficulty")

    monkeypatch.setattr(pow_module, "_search_in_processes", no_processes)
    prefix = _header(12).prefix_bytes()
    assert mine_nonce(prefix, 12, workers=8) == mine_nonce(prefix, 12)


@pytest.mark.usefixtures("parallel_at_any_difficulty")
def test_spawned_workers_find_the_same_nonce(monkeypatch: pytest.MonkeyPatch) -> None:
    # Where fork is not used (macOS, Windows), workers are spawned: they import pow afresh.
    import multiprocessing

    import torchchain.chain.pow as pow_module

    monkeypatch.setattr(pow_module, "_context", lambda: multiprocessing.get_context("spawn"))
    prefix = _header(10, time_ms=9).prefix_bytes()
    assert mine_nonce(prefix, 10, start_nonce=3, workers=2) == mine_nonce(prefix, 10, start_nonce=3)


@pytest.mark.usefixtures("parallel_at_any_difficulty")
def test_a_failing_worker_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    import torchchain.chain.pow as pow_module

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs fork, which carries the patched search into the workers")
    monkeypatch.setattr(pow_module, "_context", lambda: multiprocessing.get_context("fork"))

    def broken(*args: object) -> None:
        raise OSError("simulated worker failure")

    monkeypatch.setattr(pow_module, "_search", broken)
    with pytest.raises(RuntimeError, match="2 of 2 mining processes failed"):
        mine_nonce(b"x", 8, workers=2)


@pytest.mark.parametrize("workers", [0, -1, 257, True, 2.0, "2", None])
def test_mine_nonce_refuses_bad_worker_counts(workers: object) -> None:
    with pytest.raises(ValueError, match="workers"):
        mine_nonce(b"x", 8, workers=workers)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers"):
        mine(_header(8), workers=workers)  # type: ignore[arg-type]


def test_mine_nonce_accepts_the_largest_worker_count() -> None:
    # 256 is allowed; at this difficulty it is searched in the calling process.
    assert mine_nonce(b"x", 8, workers=256) == mine_nonce(b"x", 8)


def test_the_worker_module_does_not_import_torch() -> None:
    # A spawned worker imports torchchain.chain.pow (and the packages above it) and nothing
    # else of the parent's; that must not pull in torch.
    import subprocess
    import sys

    code = "import sys, torchchain.chain.pow; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.usefixtures("parallel_at_any_difficulty")
def test_make_genesis_and_make_block_mine_the_same_blocks_with_workers() -> None:
    from torchchain.chain.block import make_block, make_genesis
    from torchchain.chain.crypto import SigningKey

    key = SigningKey.generate(b"\x01" * 32)
    common = {"members": [key.public_key], "config": {"x": 1}, "model_hash": "6" * 64, "miner": key, "difficulty": 10}
    genesis = make_genesis(**common, time_ms=1)
    assert make_genesis(**common, time_ms=1, workers=2) == genesis
    follow = {"prev": genesis, "round": 1, "transactions": [], "meta": {}, "model_hash": "7" * 64}
    block = make_block(**follow, miner=key, difficulty=10, time_ms=2)
    assert make_block(**follow, miner=key, difficulty=10, time_ms=2, workers=3) == block
