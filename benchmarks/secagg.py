"""Secure aggregation (Bonawitz et al. 2017): what one round costs each client and the server.

Usage::

    python benchmarks/secagg.py                    # n in 5,10,50,100 x dropouts 0,10,30 %, d=50,000
    python benchmarks/secagg.py --quick            # n in 5,10, d=2,000: a few seconds
    python benchmarks/secagg.py --dim 100000 --clients 10,50 --dropouts 0,0.3

Every client of a round is simulated in this process through the public API of
:mod:`torchchain.privacy.secagg`, in protocol order: keys, Shamir shares (encrypted), routing,
decryption, masking, collection, share reveal, unmasking. The threshold is a majority,
``n // 2 + 1``; the dropped clients are the first ones by id and drop after sharing, before
masking (the expensive case for the server: each dropped client's pairwise masks are rebuilt
against every survivor). Client-side costs do not depend on the dropout rate, so keys, shares and
masked inputs are made once per ``n`` and reused for each dropout rate. Times are means per
client (``keys+shares`` covers key generation, two Shamir splits and ``n`` share encryptions;
``mask`` the pairwise agreements, PRG expansion and ring sums; ``reveal`` receiving shares and
answering the request) or the server's total (``route``: checking the share bundles;
``unmask``: collecting inputs, checking every revealed share, Shamir reconstruction, removing the
masks). Bytes are the canonical wire encodings, mean per surviving client: ``up`` is what it
sends (its keys, its share bundle, its masked input, its reveal), ``down`` what it receives (the
roster, its inbox of shares, the request). The last column checks that the unmasked ring sum
equals the sum of the survivors' encoded updates, bit for bit. Output goes to stdout only.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from torchchain.privacy.secagg import (
    Roster,
    SecAggConfig,
    collect_masked_inputs,
    encode_fixed_point,
    encode_masked_input,
    mask_update,
    receive_shares,
    reveal_shares,
    route_shares,
    setup_client,
    share_secrets,
    unmask_sum,
)


def run(n: int, dropouts: list[float], dim: int, config_args: dict, seed: int) -> list[dict]:
    """One client population of size ``n``; one unmasking per dropout rate. Returns table rows."""
    config = SecAggConfig(threshold=n // 2 + 1, **config_args)
    round_number = 1
    generator = torch.Generator().manual_seed(seed)
    updates = {f"c{i:03d}": torch.randn(dim, generator=generator, dtype=torch.float64) * 0.01 for i in range(n)}

    start = time.perf_counter()
    keys = {c: setup_client(c, round_number, seed=f"bench/{seed}/{c}".encode().ljust(16, b".")) for c in updates}
    roster = Roster([k.public for k in keys.values()], round_number=round_number)
    bundles = {c: [s.to_bytes() for s in share_secrets(k, roster, config).values()] for c, k in keys.items()}
    share_time = (time.perf_counter() - start) / n

    start = time.perf_counter()
    routed = route_shares(bundles, roster, config)
    route_time = time.perf_counter() - start

    start = time.perf_counter()
    held = {c: receive_shares(k, roster, routed.inbox[c], participants=routed.participants) for c, k in keys.items()}
    receive_time = (time.perf_counter() - start) / n

    mask_times = []
    masked = {}
    for c, k in keys.items():
        start = time.perf_counter()
        masked[c] = mask_update(k, updates[c], roster, config, participants=routed.participants)
        mask_times.append(time.perf_counter() - start)
    wire = {c: encode_masked_input(y, client=c, round_number=round_number, config=config) for c, y in masked.items()}
    encoded = {c: encode_fixed_point(u, config) for c, u in updates.items()}

    keys_bytes = {c: len(k.public.to_bytes()) for c, k in keys.items()}
    roster_bytes = sum(keys_bytes.values())
    bundle_bytes = {c: sum(len(s) for s in bundle) for c, bundle in bundles.items()}
    inbox_bytes = {c: sum(len(s.to_bytes()) for s in routed.inbox[c]) for c in keys}

    rows = []
    for rate in dropouts:
        dropped = set(sorted(updates)[: math.floor(rate * n + 0.5)])
        start = time.perf_counter()
        collected = collect_masked_inputs(
            roster, routed, {c: w for c, w in wire.items() if c not in dropped}, dim=dim, config=config
        )
        request_bytes = len(collected.request.to_bytes())
        reveal_times, reveals = [], {}
        server_time = time.perf_counter() - start
        for c in collected.request.survivors:
            start = time.perf_counter()
            reveals[c] = reveal_shares(keys[c], held[c], collected.request.to_bytes(), roster, config).to_bytes()
            reveal_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        result = unmask_sum(collected, reveals, roster, routed, config)
        server_time += time.perf_counter() - start

        expected = torch.zeros(dim, dtype=torch.int64)
        for c in result.survivors:
            expected = (expected + encoded[c]) & config.ring_mask
        survivors = result.survivors
        up = statistics.mean(keys_bytes[c] + bundle_bytes[c] + len(wire[c]) + len(reveals[c]) for c in survivors)
        down = statistics.mean(roster_bytes + inbox_bytes[c] + request_bytes for c in survivors)
        rows.append(
            {
                "n": n,
                "dropped": len(dropped),
                "rate": rate,
                "t": config.threshold,
                "share": share_time,
                "mask": statistics.mean(mask_times),
                "reveal": receive_time + statistics.mean(reveal_times),
                "route": route_time,
                "unmask": server_time,
                "up": up,
                "down": down,
                "exact": torch.equal(result.ring_sum, expected),
            }
        )
    return rows


def kib(value: float) -> str:
    return f"{value / 1024:,.1f} KiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=None, help="update length (default 50,000; 2,000 with --quick)")
    parser.add_argument("--clients", default=None, help="comma-separated client counts (default 5,10,50,100)")
    parser.add_argument("--dropouts", default="0,0.1,0.3", help="comma-separated dropout fractions")
    parser.add_argument("--quick", action="store_true", help="n in 5,10 and d=2,000")
    parser.add_argument("--ring-bits", type=int, default=32)
    parser.add_argument("--frac-bits", type=int, default=20)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dim = args.dim if args.dim is not None else (2_000 if args.quick else 50_000)
    clients = [int(c) for c in (args.clients or ("5,10" if args.quick else "5,10,50,100")).split(",")]
    dropouts = [float(d) for d in args.dropouts.split(",")]
    config_args = {"clip": args.clip, "frac_bits": args.frac_bits, "ring_bits": args.ring_bits}

    print(
        f"secagg, d={dim:,}, ring 2^{args.ring_bits}, frac_bits={args.frac_bits}, clip={args.clip}, "
        f"threshold n//2+1, torch threads {torch.get_num_threads()}\n"
    )
    print(
        "| clients | dropped | threshold | client keys+shares (s) | client mask (s) | client reveal (s) "
        "| server route (s) | server unmask (s) | up / client | down / client | exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    wall = time.perf_counter()
    for n in clients:
        for row in run(n, dropouts, dim, config_args, args.seed):
            print(
                f"| {row['n']} | {row['dropped']} ({row['rate']:.0%}) | {row['t']} | {row['share']:.4f} "
                f"| {row['mask']:.4f} | {row['reveal']:.4f} | {row['route']:.4f} | {row['unmask']:.3f} "
                f"| {kib(row['up'])} | {kib(row['down'])} | {'yes' if row['exact'] else 'NO'} |",
                flush=True,
            )
    print(f"\nwall time {time.perf_counter() - wall:.1f} s")


if __name__ == "__main__":
    main()
