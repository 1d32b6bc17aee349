"""Proof-of-work hash rate: ``mine_nonce`` against hashlib's own SHA-256 rate, on 1 and more cores.

For each of ``--headers`` block headers at ``--bits`` difficulty it mines the header with every
worker count of ``--workers`` and, over the same number of hashes, runs the reference loops:

- hashlib (table): copy the prefix's SHA-256 midstate, update it with 8 bytes, take the digest,
  the 8-byte nonces read from a precomputed table (no per-nonce encoding): the rate a Python
  miner cannot beat on one core without leaving hashlib;
- hashlib (one value): the same with one fixed 8-byte value;
- hashlib (table) in W processes: that loop forked into W processes sharing the hashes, what
  hashlib does on W cores of this machine at that moment (the ceiling for W workers);
- previous loop: the loop ``mine_nonce`` had before batching (``nonce.to_bytes`` per nonce).

The reference "per core" is the faster of the two hashlib loops. A rate counts the hashes up to
the nonce found (``nonce - start + 1``), so work a worker does past that nonce is not counted.
Every method runs once per header and repeat, one after the other, so all see the same machine
load; rates are given per wall-clock second and per CPU second (parent and worker processes
together), the second being the one that a machine shared with other jobs leaves meaningful.

    python benchmarks/mining.py --bits 20 --headers 8 --repeats 2 --workers 1,2 [--with-torch]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import resource
import statistics
import struct
import time
from collections.abc import Callable

import torchchain.chain.pow as pow_module
from torchchain.chain.block import BLOCK_VERSION, ZERO_HASH, BlockHeader
from torchchain.chain.pow import meets_difficulty, mine_nonce

_TABLE = [struct.pack(">Q", n) for n in range(1 << 16)]


def _header(bits: int, time_ms: int) -> BlockHeader:
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
        difficulty=bits,
        miner="5" * 64,
        nonce=0,
    )


def hashlib_table(prefix: bytes, count: int) -> None:
    """``count`` hashes: midstate copy, 8-byte update from a precomputed table, digest."""
    copy = hashlib.sha256(prefix).copy
    table = _TABLE
    for _ in range(count // len(table)):
        for b in table:
            c = copy()
            c.update(b)
            c.digest()
    for b in table[: count % len(table)]:
        c = copy()
        c.update(b)
        c.digest()


def hashlib_one_value(prefix: bytes, count: int) -> None:
    """``count`` hashes: midstate copy, update with one fixed 8-byte value, digest."""
    copy = hashlib.sha256(prefix).copy
    b = struct.pack(">Q", 123456789)
    for _ in range(count):
        c = copy()
        c.update(b)
        c.digest()


def hashlib_in_processes(prefix: bytes, count: int, processes: int) -> None:
    """:func:`hashlib_table` split over ``processes`` forked processes of ``count / processes``
    hashes each: what hashlib itself does on that many cores of this machine at this moment."""
    ctx = multiprocessing.get_context("fork")
    share = -(-count // processes)
    procs = [ctx.Process(target=hashlib_table, args=(prefix, share)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()


def previous_loop(prefix: bytes, bits: int) -> int:
    """``mine_nonce`` as it was before batching: ``nonce.to_bytes`` and a midstate copy per nonce."""
    target = (1 << (256 - bits)).to_bytes(32, "big")
    copy_midstate = hashlib.sha256(prefix).copy
    for nonce in range(2**64):
        candidate = copy_midstate()
        candidate.update(nonce.to_bytes(8, "big"))
        if candidate.digest() < target:
            return nonce
    raise AssertionError("unreachable")


def _timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    """``fn()``'s result, its wall time and the CPU time of this process and its children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = time.process_time() + children.ru_utime + children.ru_stime
    t0 = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() + children.ru_utime + children.ru_stime - cpu0
    return result, wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, default=20, help="difficulty of the mined headers")
    parser.add_argument("--headers", type=int, default=8, help="how many headers to mine")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the headers")
    parser.add_argument("--workers", default="1,2", help="worker counts to mine with, comma-separated")
    parser.add_argument(
        "--with-torch", action="store_true", help="load torch (and start its threads) first, as a training run has"
    )
    args = parser.parse_args()
    if args.with_torch:
        import torch

        (torch.randn(256, 256) @ torch.randn(256, 256)).sum()
    worker_counts = [int(w) for w in args.workers.split(",")]

    headers = [_header(args.bits, time_ms) for time_ms in range(1, args.headers + 1)]
    nonces = {h.time_ms: mine_nonce(h.prefix_bytes(), args.bits) for h in headers}
    hashes = sum(n + 1 for n in nonces.values()) * args.repeats
    print(f"{os.cpu_count()} CPUs (os.cpu_count), load average {os.getloadavg()[0]:.2f} before the run")
    print(f"{args.headers} headers at {args.bits} bits, nonces {sorted(nonces.values())}, {args.repeats} repeats")

    if args.bits < pow_module._PARALLEL_MIN_BITS:
        print(f"note: below {pow_module._PARALLEL_MIN_BITS} bits, workers > 1 mine in the calling process")
    # name -> (cores it may use, what it runs for one header)
    methods: dict[str, tuple[int, Callable[[BlockHeader], object]]] = {
        "hashlib (table)": (1, lambda h: hashlib_table(h.prefix_bytes(), nonces[h.time_ms] + 1)),
        "hashlib (one value)": (1, lambda h: hashlib_one_value(h.prefix_bytes(), nonces[h.time_ms] + 1)),
        "previous loop": (1, lambda h: previous_loop(h.prefix_bytes(), args.bits)),
    }
    for w in worker_counts:
        if w > 1:
            methods[f"hashlib (table) in {w} processes"] = (
                w,
                lambda h, w=w: hashlib_in_processes(h.prefix_bytes(), nonces[h.time_ms] + 1, w),
            )
    for w in worker_counts:
        methods[f"mine_nonce workers={w}"] = (w, lambda h, w=w: mine_nonce(h.prefix_bytes(), args.bits, workers=w))
    wall = dict.fromkeys(methods, 0.0)
    cpu = dict.fromkeys(methods, 0.0)
    per_header: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for h in headers:
            for name, (_, fn) in methods.items():
                result, w_s, c_s = _timed(lambda fn=fn, h=h: fn(h))
                if name.startswith("mine_nonce") or name == "previous loop":
                    assert result == nonces[h.time_ms], (name, result, nonces[h.time_ms])
                    assert meets_difficulty(h.with_nonce(result).hash(), args.bits)
                wall[name] += w_s
                cpu[name] += c_s
                per_header[name].append(w_s)

    ref_wall = max(hashes / wall[n] for n in ("hashlib (table)", "hashlib (one value)"))
    ref_cpu = max(hashes / cpu[n] for n in ("hashlib (table)", "hashlib (one value)"))
    print()
    print(f"reference (hashlib, 1 core): {ref_wall / 1e6:.3f} MH/s wall, {ref_cpu / 1e6:.3f} MH/s per CPU second")
    print()
    print("| method | MH/s (wall) | vs reference x cores | MH/s per CPU s | vs reference per CPU s | cores busy |")
    print("|---|---|---|---|---|---|")
    for name, (cores, _) in methods.items():
        r_wall, r_cpu = hashes / wall[name], hashes / cpu[name]
        print(
            f"| {name} | {r_wall / 1e6:.3f} | {r_wall / (ref_wall * cores):.2f} (x{cores}) | {r_cpu / 1e6:.3f} "
            f"| {r_cpu / ref_cpu:.2f} | {cpu[name] / wall[name]:.2f} |"
        )
    for w in worker_counts:
        if w > 1:
            ours, theirs = f"mine_nonce workers={w}", f"hashlib (table) in {w} processes"
            print(
                f"mine_nonce workers={w} / hashlib in {w} processes: {wall[theirs] / wall[ours]:.2f} (wall), "
                f"{cpu[theirs] / cpu[ours]:.2f} (per CPU s)"
            )
    print(f"load average {os.getloadavg()[0]:.2f} after the run")
    print()
    print(f"wall time to mine one {args.bits}-bit header (mean over {len(headers) * args.repeats}, same nonces):")
    for w in worker_counts:
        times = per_header[f"mine_nonce workers={w}"]
        print(f"  workers={w}: {statistics.mean(times):.3f} s (min {min(times):.3f}, max {max(times):.3f})")


if __name__ == "__main__":
    main()
