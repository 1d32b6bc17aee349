"""What differential privacy costs: final test accuracy against the ε a run records.

Usage::

    python benchmarks/privacy.py --out benchmarks/results/privacy            # digits, minutes
    python benchmarks/privacy.py --dataset mnist --rounds 20 --sigmas 1.0 --mechanisms none,dpsgd \\
        --extra "local_steps=10 batch_size=64" --out benchmarks/results/privacy_mnist   # ../shared/data

Each cell is one call of ``torchchain.experiment.run`` (as ``python train.py <overrides>``)
with ``privacy=<mechanism> privacy.noise_multiplier=<sigma>``, for each strategy (FedAvg and the
coordinate-wise median by default; ``--strategies`` picks others) and each partition (iid and label-sorted shards). The ε is the one the
ledger records for the run (the largest over clients at δ = 1e-5), so the table shows exactly
what ``torchchain audit`` would recount.

Mechanisms: ``none`` (ε = ∞), ``dpsgd`` (record-level DP-SGD in each client's local training,
Opacus), ``client_dp`` (each client clips its whole update to ``--clip`` and adds
N(0, (σ·clip)²) before publishing it; a client-level guarantee towards every ledger reader).

Written into --out: ``privacy.md`` (the table) and ``privacy.csv``. Runs live under --runs and
are read back when they already finished with the same overrides (see robustness.py).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness import ROOT, run_cell, strategy_overrides  # noqa: E402

DATASETS = {
    "digits": ("dataset=digits", "clients=10"),
    "mnist": (
        "dataset=mnist", f"dataset.root={ROOT.parent / 'shared' / 'data'}", "dataset.download=false", "clients=25",
    ),
}
PARTITIONS = {"iid": ("partition.kind=iid",), "shards": ("partition.kind=shards", "partition.shards_per_client=2")}


def _cell_overrides(args: argparse.Namespace, mechanism: str, sigma: float | None, strategy: str, partition: str) -> list[str]:
    overrides = [
        *DATASETS[args.dataset], *PARTITIONS[partition], f"rounds={args.rounds}", f"seed={args.seed}",
        "runtime.progress=false", *strategy_overrides(strategy), f"privacy={mechanism}", *args.extra.split(),
    ]
    if mechanism != "none":
        overrides += [f"privacy.noise_multiplier={sigma}", "privacy.noise_seed=0"]
    if mechanism == "client_dp":
        overrides.append(f"privacy.clip={args.clip}")
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="digits")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mechanisms", default="none,dpsgd,client_dp")
    parser.add_argument("--sigmas", default="0.5,1.0,2.0", help="noise multipliers of each private mechanism")
    parser.add_argument("--clip", type=float, default=0.5, help="client_dp's L2 bound on a whole update")
    parser.add_argument("--strategies", default="fedavg,median")
    parser.add_argument("--partitions", default="iid,shards")
    parser.add_argument("--extra", default="", help="space-separated Hydra overrides added to every run")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", type=Path, default=None, help="default: outputs/privacy/<dataset>")
    parser.add_argument("--rerun", action="store_true")
    args = parser.parse_args(argv)
    runs = args.runs or ROOT / "outputs" / "privacy" / args.dataset
    sigmas = [float(s) for s in args.sigmas.split(",")]

    rows = []
    for mechanism in args.mechanisms.split(","):
        for sigma in ([None] if mechanism == "none" else sigmas):
            for partition in args.partitions.split(","):
                for strategy in args.strategies.split(","):
                    overrides = _cell_overrides(args, mechanism, sigma, strategy, partition)
                    digest = hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:10]
                    run_dir = runs / f"{mechanism}__{sigma}__{partition}__{strategy}__{digest}"
                    result = run_cell(
                        overrides, run_dir, attack="none", strategy=strategy, byzantine=0, seed=args.seed,
                        rerun=args.rerun, keep_ledger=False,
                    )
                    epsilon = None
                    if result.status == "ok":
                        privacy = json.loads((run_dir / "summary.json").read_text()).get("privacy") or {}
                        epsilon = privacy.get("epsilon")
                    row = {
                        "mechanism": mechanism, "sigma": sigma, "epsilon": epsilon, "partition": partition,
                        "strategy": strategy, "accuracy": result.accuracy, "round_seconds": result.round_seconds,
                        "status": result.status, "note": result.note,
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "privacy.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"{args.dataset}, {args.rounds} rounds, seed {args.seed}{', ' + args.extra if args.extra else ''}; "
        "epsilon at delta=1e-5 as the ledger records it",
        "",
        "| mechanism | sigma | epsilon | partition | strategy | accuracy | s/round |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        eps = "inf" if r["mechanism"] == "none" else ("-" if r["epsilon"] is None else f"{r['epsilon']:.3g}")
        acc = r["status"] if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        secs = "-" if r["round_seconds"] is None else f"{r['round_seconds']:.2f}"
        lines.append(
            f"| {r['mechanism']} | {r['sigma'] if r['sigma'] is not None else '-'} | {eps} | {r['partition']} "
            f"| {r['strategy']} | {acc} | {secs} |"
        )
    table = "\n".join(lines) + "\n"
    (args.out / "privacy.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
