"""Dispersion of the honest updates: how far apart clients' updates are, relative to their mean.

Usage::

    python benchmarks/dispersion.py dataset=digits clients=10 partition.kind=iid rounds=30
    python benchmarks/dispersion.py dataset=digits clients=10 partition.kind=shards \\
        partition.shards_per_client=2 rounds=30

The arguments are ``python train.py`` overrides; the run has no attack (``attack=none`` is
added) and keeps every update (``chain.keep_updates=all``). After it, every block's accepted
updates are read back from the run's ledger, and for each round ``t``

    r_t = mean_i ||u_i - mu||^2 / ||mu||^2        (mu = mean_i u_i)

is printed as quantiles over the rounds, with ``1 / (2 + r_t)``.

Why: Allouah, Guerraoui, Gupta, Pinot and Rizk, 2023, "Robust Distributed Learning: Tight Error
Bounds and Breakdown Point under Data Heterogeneity" (NeurIPS; arXiv:2309.13591) model
heterogeneity as (G, B)-gradient dissimilarity, ``mean_i ||g_i - g||^2 <= G^2 + B^2 ||g||^2``,
and show that no aggregation rule keeps a bounded error once the malicious fraction reaches
``1 / (2 + B^2)``. With ``G = 0`` the smallest ``B^2`` that fits one round is ``r_t``. Updates
are several local SGD steps (with momentum, when set), not gradients, and ``r_t`` includes
sampling noise, so ``1 / (2 + r_t)`` is a reading of the measured spread, not the bound itself:
it says how much more room attackers have on one data split than on another.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]


def ratios(ledger_dir: Path) -> list[float]:
    """``r_t`` of every block of the ledger at ``ledger_dir``, in round order."""
    from torchchain.chain.ledger import Ledger
    from torchchain.updates.delta import flatten
    from torchchain.updates.serialize import update_from_bytes

    ledger = Ledger.open(ledger_dir)
    out = []
    for block in ledger.iter_blocks(1):
        rows = []
        for tx in block.transactions:
            blob = ledger.get_blob(tx.update_hash)
            rows.append(flatten(update_from_bytes(blob, max_bytes=len(blob))).double())
        updates = torch.stack(rows)
        mean = updates.mean(dim=0)
        out.append(float(((updates - mean).norm(dim=1) ** 2).mean() / mean.norm() ** 2))
    return out


def main() -> None:
    overrides = [*sys.argv[1:], "attack=none", "chain.keep_updates=all", "runtime.progress=false"]
    from torchchain.experiment import run

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        summary = run(cfg, run_dir)
        values = ratios(Path(run_dir) / "ledger")
    qs = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    print(f"\n`python benchmarks/dispersion.py {' '.join(sys.argv[1:])}`: {len(values)} rounds, "
          f"final accuracy {summary.get('final_accuracy')}")
    print("| | first round | 25% | median | 75% | last round |")
    print("|---|---|---|---|---|---|")
    row = [values[0], qs[0], qs[1], qs[2], values[-1]]
    print("| r_t | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    print("| 1 / (2 + r_t) | " + " | ".join(f"{1 / (2 + v):.3f}" for v in row) + " |")


if __name__ == "__main__":
    main()
