"""Aggregation at scale: seconds and peak extra memory of every built-in rule on n rows of d floats.

Usage::

    python benchmarks/aggregation.py                          # n=100, d=1.2M, f=10, 3 repeats
    python benchmarks/aggregation.py --n 30 --d 100000 --repeats 1
    python benchmarks/aggregation.py --rules krum,bulyan --no-warmup

The rows are float64 and seeded: a shared direction plus per-client noise for the honest rows,
and ``f`` outlier rows (sign-flipped and scaled up), so the robust rules have something to
reject. Each rule's ``Strategy.__call__`` (input validation, pre-aggregation steps and the rule
itself) is timed ``--repeats`` times after one warm-up call and the median printed, with the peak
resident memory above what the process held before the call (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` before every call; the input matrix itself is not counted). The last
column is a hash of the update's bytes, to compare runs and versions bit for bit. The first row,
``call_overhead``, is a rule that returns row 0: what ``Strategy.__call__`` costs around any rule.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import statistics
import time
from collections.abc import Callable

import torch

from torchchain.strategies import (
    Aggregate,
    Bucketing,
    Bulyan,
    CenteredClipping,
    FedAvg,
    GeoMed,
    Krum,
    Median,
    MultiKrum,
    Strategy,
    TrimmedMean,
)

class FirstRow(Strategy):
    """Returns row 0: what ``Strategy.__call__`` costs around a rule (input checks and copies)."""

    name = "first_row"

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor) -> Aggregate:
        trust = torch.zeros(updates.shape[0], dtype=torch.float64)
        trust[0] = 1.0
        return Aggregate(update=updates[0].clone(), trust=trust)


#: Rule label -> how to build it for ``f`` Byzantine rows.
RULES: dict[str, Callable[[int], Strategy]] = {
    "call_overhead": lambda f: FirstRow(f=f),
    "fedavg": lambda f: FedAvg(f=f),
    "median": lambda f: Median(f=f),
    "trimmed_mean": lambda f: TrimmedMean(f=f),
    "krum": lambda f: Krum(f=f),
    "multikrum": lambda f: MultiKrum(f=f),
    "bulyan": lambda f: Bulyan(f=f),
    "geomed": lambda f: GeoMed(f=f),
    "centered_clipping": lambda f: CenteredClipping(f=f),
    "krum+bucketing": lambda f: Krum(f=f, pre=[Bucketing(s=2)]),
}


def make_updates(n: int, d: int, f: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rows of ``d`` float64: honest rows around a shared direction, the last ``f`` outliers."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(d, generator=generator, dtype=torch.float64) * 1e-3
    updates = torch.randn(n, d, generator=generator, dtype=torch.float64)
    updates.mul_(1e-3).add_(direction)
    updates[n - f :] = direction * -5.0 + updates[n - f :] * 3.0
    weights = torch.randint(10, 100, (n,), generator=generator).to(torch.float64)
    return updates, weights


def _memory_mib() -> tuple[float, float]:
    """``(peak, current)`` resident memory of this process in MiB."""
    with open("/proc/self/status") as status:
        text = status.read()
    peak = int(re.search(r"VmHWM:\s+(\d+)", text).group(1))
    current = int(re.search(r"VmRSS:\s+(\d+)", text).group(1))
    return peak / 1024, current / 1024


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def measure(build: Callable[[], Strategy], updates: torch.Tensor, weights: torch.Tensor, *, repeats: int, warmup: bool):
    """Median seconds, the largest peak extra MiB, and the update's hash over ``repeats`` calls."""
    seconds, extra = [], []
    digest = ""
    for attempt in range(repeats + int(warmup)):
        strategy = build()  # a fresh one per call: centered clipping is stateful
        _reset_peak()
        before = _memory_mib()[1]
        start = time.perf_counter()
        result = strategy(updates, weights, generator=torch.Generator().manual_seed(0))
        elapsed = time.perf_counter() - start
        peak = _memory_mib()[0]
        digest = hashlib.sha256(result.update.numpy().tobytes()).hexdigest()[:12]
        del result
        if warmup and attempt == 0:
            continue
        seconds.append(elapsed)
        extra.append(peak - before)
    return statistics.median(seconds), max(extra), digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="rows (clients); default 100")
    parser.add_argument("--d", type=int, default=1_200_000, help="coordinates per row; default 1.2M")
    parser.add_argument("--f", type=int, default=10, help="Byzantine rows assumed (and outliers made); default 10")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per rule, median reported; default 3")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed first call of each rule")
    parser.add_argument("--rules", default=",".join(RULES), help=f"comma-separated subset of {','.join(RULES)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rules = [rule.strip() for rule in args.rules.split(",") if rule.strip()]
    unknown = sorted(set(rules) - set(RULES))
    if unknown:
        parser.error(f"unknown rules {unknown}; choose from {sorted(RULES)}")

    updates, weights = make_updates(args.n, args.d, args.f, args.seed)
    print(
        f"n={args.n} d={args.d} f={args.f} float64 ({updates.numel() * 8 / 2**20:.0f} MiB of updates), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, repeats={args.repeats}, "
        f"warm-up={'no' if args.no_warmup else 'yes'}"
    )
    print(f"{'rule':20s} {'seconds':>9s} {'peak MiB':>9s}  update sha256")
    for rule in rules:
        seconds, extra, digest = measure(
            lambda rule=rule: RULES[rule](args.f), updates, weights, repeats=args.repeats, warmup=not args.no_warmup
        )
        print(f"{rule:20s} {seconds:9.3f} {extra:9.0f}  {digest}", flush=True)


if __name__ == "__main__":
    main()
