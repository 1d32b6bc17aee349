"""Proof of work: find a nonce whose block hash starts with ``difficulty`` zero bits.

The hashcash scheme of Back (2002), "Hashcash - A Denial of Service Counter-Measure", as used
for blocks by Nakamoto (2008), "Bitcoin: A Peer-to-Peer Electronic Cash System". Difficulty is
counted in leading zero bits of the SHA-256 digest, so each extra bit doubles the expected work.

The search can be split over several processes (``mine_nonce(..., workers=n)``); whatever the
number of workers, it returns the smallest nonce that works, so a block does not depend on the
machine that mined it. This module imports only the standard library (no torch), because its
worker function is what a spawned mining process imports.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
from typing import Any

from torchchain.errors import LedgerError

__all__ = ["MAX_WORKERS", "block_work", "meets_difficulty", "mine_nonce"]

_DIGEST_BITS = 256
_NONCE_LIMIT = 2**64

MAX_WORKERS = 256
"""The most processes :func:`mine_nonce` splits a search over."""

# The nonce is hashed as 8 big-endian bytes: 7 high bytes, then 1 low byte. A batch is the 256
# nonces that share their high bytes: the high bytes are fed to a copy of the prefix's midstate
# once per batch, and each nonce then costs one copy, a 1-byte update and a digest, with the low
# byte taken from this table rather than built per nonce.
_LOW_BYTES = tuple(bytes((low,)) for low in range(256))
_HIGH_LIMIT = _NONCE_LIMIT >> 8

# Below this difficulty the expected search (2**bits hashes: about 0.1 s on one core at 18 bits)
# costs about what starting the workers does (forking a parent with torch loaded takes some
# 20 ms a worker), so ``workers > 1`` searches in the calling process. The nonce found is the
# same either way; tests lower it to exercise the parallel search at small difficulties.
_PARALLEL_MIN_BITS = 18

# What a worker's shared "best nonce found so far" holds while none has been found.
_NO_NONCE = _NONCE_LIMIT - 1


def _check_bits(bits: int) -> None:
    if type(bits) is not int or not 0 <= bits <= _DIGEST_BITS:
        raise ValueError(f"difficulty must be an integer number of bits in [0, {_DIGEST_BITS}], got {bits!r}")


def meets_difficulty(block_hash: str, bits: int) -> bool:
    """Whether the 256-bit digest written as ``block_hash`` (64 hex characters) starts with
    ``bits`` zero bits.

    Raises:
        ValueError: ``block_hash`` is not 64 hex characters or ``bits`` is outside [0, 256].
    """
    _check_bits(bits)
    if not isinstance(block_hash, str) or len(block_hash) != 64:
        raise ValueError(f"a block hash is 64 hex characters, got {block_hash!r}")
    return int(block_hash, 16) >> (_DIGEST_BITS - bits) == 0


def block_work(bits: int) -> int:
    """The expected number of hashes to mine a block at ``bits`` difficulty: ``2**bits``.

    Summed over a chain it is the chain's total work, the measure a fork choice compares.
    """
    _check_bits(bits)
    return 2**bits


def mine_nonce(prefix: bytes, bits: int, *, start_nonce: int = 0, workers: int = 1) -> int:
    """The smallest nonce at or above ``start_nonce`` such that ``SHA-256(prefix + nonce)``
    starts with ``bits`` zero bits; the nonce is hashed as 8 big-endian bytes.

    ``prefix`` is hashed once; each try copies that SHA-256 state and feeds it only the nonce
    bytes, and the digest is compared as bytes against a precomputed target (big-endian bytes
    order like the numbers they encode). Works on bytes only, so it knows nothing of blocks.

    With ``workers > 1`` the nonces are dealt out to that many processes in batches of 256
    (batch ``k`` after the one holding ``start_nonce`` goes to worker ``k % workers``), each
    searching its batches upward from the prefix's midstate. A worker that finds a nonce
    publishes it; the others stop at their first batch above the smallest nonce published, so
    the search ends a batch or so after the first find, and the result is the smallest nonce
    that works: the same nonce as ``workers=1`` whatever the worker count and timing. Workers
    are forked on Linux (they run only this module's hashlib code, never torch, so a parent
    with torch loaded is safe to fork) and spawned elsewhere. Below 18 bits of difficulty, where
    starting processes costs about what they save, and inside a daemonic process (which may not
    start processes), the search runs in the calling process.

    Args:
        prefix: The nonce-free part of the hashed input (a header's ``prefix_bytes()``).
        bits: Difficulty in leading zero bits.
        start_nonce: The first nonce to try.
        workers: How many processes to search with, 1 to :data:`MAX_WORKERS`; at most the
            number of cores the caller may use is useful.

    Returns:
        The first nonce at or above ``start_nonce`` that meets the difficulty.

    Raises:
        ValueError: ``start_nonce`` is outside [0, 2**64), ``bits`` outside [0, 256] or
            ``workers`` outside [1, 256].
        LedgerError: No nonce from ``start_nonce`` to 2**64 - 1 works (only conceivable with a
            start near the top of the range).
        RuntimeError: A worker process failed.
    """
    _check_bits(bits)
    if type(start_nonce) is not int or not 0 <= start_nonce < _NONCE_LIMIT:
        raise ValueError(f"start_nonce must be an integer in [0, 2**64), got {start_nonce!r}")
    if type(workers) is not int or not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be an integer in [1, {MAX_WORKERS}], got {workers!r}")
    if bits == 0:
        return start_nonce
    # digest < target  <=>  the first `bits` bits of the digest are zero.
    target = (1 << (_DIGEST_BITS - bits)).to_bytes(32, "big")
    if workers == 1 or bits < _PARALLEL_MIN_BITS or multiprocessing.current_process().daemon:
        nonce = _search(hashlib.sha256(prefix), target, start_nonce, 1)
    else:
        nonce = _search_in_processes(prefix, target, start_nonce, workers)
    if nonce is None:
        raise LedgerError(
            f"no nonce in [{start_nonce}, 2**64) meets difficulty {bits}; mine from a lower start_nonce"
        )
    return nonce


def _search(midstate: Any, target: bytes, start: int, step: int, shared: Any = None) -> int | None:
    """The first nonce below ``target`` among the nonces at or above ``start`` in the batches
    ``start >> 8``, ``(start >> 8) + step``, ``(start >> 8) + 2 * step``, ...; ``None`` when none
    works, or when ``shared`` (a worker's ``(any_found, best)`` shared values) says that another
    worker found a nonce below the next batch.

    ``midstate`` is the SHA-256 state after the prefix. The inner loop is the hot path of mining:
    everything it touches is a local name, and per nonce it makes three calls and a comparison.
    """
    copy_midstate = midstate.copy
    lows = _LOW_BYTES[start & 0xFF :]
    for high in range(start >> 8, _HIGH_LIMIT, step):
        # One shared byte read per batch; the lock is taken only once some worker has found.
        if shared is not None and shared[0].value:
            with shared[1].get_lock():
                if high << 8 > shared[1].value:
                    return None
        head = copy_midstate()
        head.update(high.to_bytes(7, "big"))
        copy_head = head.copy
        for low in lows:
            candidate = copy_head()
            candidate.update(low)
            if candidate.digest() < target:
                return high << 8 | low[0]
        lows = _LOW_BYTES
    return None


def _context() -> Any:
    # fork starts a worker in milliseconds (some 10 ms with torch loaded) and imports nothing.
    # spawn would re-import the parent's main module (a training script imports torch) in every
    # worker, taking seconds; it is used only where fork is unavailable or unsafe (Windows, macOS).
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _search_in_processes(prefix: bytes, target: bytes, start: int, workers: int) -> int | None:
    """:func:`_search` dealt out to ``workers`` processes, batch by batch; the smallest nonce
    any of them found, or ``None``."""
    ctx = _context()
    any_found = ctx.RawValue("b", 0)
    best = ctx.Value("Q", _NO_NONCE)
    nonces = ctx.RawArray("Q", workers)
    found = ctx.RawArray("b", workers)
    # Worker i starts at batch (start >> 8) + i; worker 0 at start itself, inside that batch.
    starts = [start] + [((start >> 8) + i) << 8 for i in range(1, workers)]
    processes = [
        ctx.Process(
            target=_worker,
            args=(prefix, target, starts[i], workers, (any_found, best), nonces, found, i),
            name=f"torchchain-miner-{i}",
        )
        for i in range(workers)
    ]
    started = []
    try:
        for process in processes:
            process.start()
            started.append(process)
        for process in started:
            process.join()
    finally:
        # Only on an error or an interrupt in the parent are workers still running here.
        for process in started:
            if process.exitcode is None:
                process.terminate()
                process.join()
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {workers} mining processes failed (exit codes {failed})")
    hits = [nonces[i] for i in range(workers) if found[i]]
    return min(hits) if hits else None


def _worker(
    prefix: bytes, target: bytes, start: int, step: int, shared: Any, nonces: Any, found: Any, index: int
) -> None:
    """The body of mining process ``index``: searches its batches; on a find, lowers the shared
    best nonce to it, raises the shared "any found" flag and records the nonce in
    ``nonces[index]`` / ``found[index]``.

    It ends with ``os._exit`` so that a forked worker runs no exit handlers and flushes no
    stream inherited from the parent, whose locks another parent thread may have held.
    """
    code = 1
    try:
        nonce = _search(hashlib.sha256(prefix), target, start, step, shared)
        if nonce is not None:
            any_found, best = shared
            with best.get_lock():
                best.value = min(best.value, nonce)
            any_found.value = 1
            nonces[index] = nonce
            found[index] = 1
        code = 0
    except BaseException:  # reported, then the exit code tells the parent
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)
