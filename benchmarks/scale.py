"""Scale: round time and peak memory against registered clients and clients per round.

Usage::

    python benchmarks/scale.py                              # registered 100, 1000 x per round 10, 50
    python benchmarks/scale.py --registered 1000 --per-round 50 --reps 3
    python benchmarks/scale.py --threads 1                  # one torch thread per run
    python benchmarks/scale.py --extra "model=cnn momentum=0.9" --rounds 20   # client state kept

The data are the W-mnistlike workload of ``benchmarks/round_time.py`` (20,000 synthetic 1x28x28
training images and 2,000 test images, written as MNIST IDX files and read by torchchain's own
loader), LeNet-5, IID partition, FedAvg, SGD lr 0.05, batch 32, 5 rounds (``--rounds``),
evaluation every round. Every run is ``python train.py`` with ``clients=<registered>
clients_per_round=<per round>`` and the ``--extra`` overrides.

Two kinds of local work:

``steps``
    ``local_steps=1 batch_size=16``: every sampled client takes one step of 16 samples,
    whatever its share of the data (at 1,000 registered clients each holds 20 images), so a
    round's work depends only on how many clients it samples.
``epoch``
    ``local_epochs=1`` (the W-mnistlike setting): a sampled client trains one epoch over its own
    data, which shrinks as more clients share the 20,000 images.

Each run is a subprocess; the table gives the median round time over the runs' median rounds,
the wall time of the whole run (start-up included), and the peak resident memory of the process and its
children (``ru_maxrss``), and the size of the run's checkpoints folder at the end (the clients'
momentum buffers and codec residuals, :mod:`torchchain.runtime.client_state`). Rows of one repetition run one after another, starting one row later
each repetition, so load from other work spreads over them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from round_time import write_mnistlike

ROOT = Path(__file__).resolve().parents[1]
WORK = {
    "steps": ["local_steps=1", "batch_size=16"],
    "epoch": ["local_epochs=1", "batch_size=32"],
}
COMMON = [
    "dataset=mnist", "dataset.download=false", "model=lenet", "partition.kind=iid", "strategy=fedavg", "lr=0.05",
    "runtime.eval_every=1", "runtime.progress=false", "runtime.executor=sequential",
]


def worker(overrides: list[str], run_dir: str) -> None:
    """Run one configuration in this process; print one JSON line with its figures."""
    from hydra import compose, initialize_config_dir

    from torchchain.experiment import run

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    summary = run(cfg, run_dir)
    state_bytes = sum(p.stat().st_size for p in (Path(run_dir) / "checkpoints").rglob("*") if p.is_file())
    peak_kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({
        "median_round_seconds": summary["median_round_seconds"],
        "accuracy": summary.get("final_accuracy"),
        "peak_mib": peak_kib / 1024,
        "state_mib": state_bytes / 2**20,
    }))


def launch(overrides: list[str], threads: int) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.time()
        out = subprocess.run(
            [sys.executable, __file__, "--worker", run_dir, *overrides],
            check=True, capture_output=True, text=True, env=env,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["wall"] = time.time() - start
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registered", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--per-round", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--work", nargs="+", default=["steps", "epoch"], choices=sorted(WORK))
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (OMP_NUM_THREADS); 0: torch's default")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--extra", default="", help="space-separated overrides added to every run, e.g. 'momentum=0.9'")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        worker(rest, args.worker)
        return
    with tempfile.TemporaryDirectory() as data:
        write_mnistlike(Path(data), train=20_000, test=2_000)
        rows = [
            (work, registered, per_round)
            for work in args.work for registered in args.registered for per_round in args.per_round
            if per_round <= registered
        ]
        results: dict[tuple, list[dict]] = {row: [] for row in rows}
        for rep in range(args.reps):
            for row in rows[rep % len(rows):] + rows[: rep % len(rows)]:
                work, registered, per_round = row
                overrides = [
                    *COMMON, f"rounds={args.rounds}", f"dataset.root={data}", *WORK[work],
                    f"clients={registered}", f"clients_per_round={per_round}", *args.extra.split(),
                ]
                results[row].append(launch(overrides, args.threads))
                print(f"  rep {rep}: {row} {results[row][-1]['median_round_seconds']:.3f} s/round", file=sys.stderr, flush=True)
    print(
        f"| work | registered | per round | median s/round | wall s ({args.rounds} rounds, with start-up) "
        "| peak MiB | checkpoints MiB | accuracy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row, runs in results.items():
        work, registered, per_round = row
        print(
            f"| {work} | {registered:,} | {per_round} | {statistics.median(r['median_round_seconds'] for r in runs):.3f} "
            f"| {statistics.median(r['wall'] for r in runs):.1f} | {max(r['peak_mib'] for r in runs):,.0f} "
            f"| {max(r['state_mib'] for r in runs):,.0f} | {statistics.median(r['accuracy'] or 0 for r in runs):.3f} |"
        )


if __name__ == "__main__":
    main()
