"""Where a round's time goes: training, attack, serialization, hashing, signing, validation,
aggregation, proof of work, checkpoint and ledger writes, evaluation.

Usage::

    python benchmarks/round_time.py                       # default run and the signflip demo
    python benchmarks/round_time.py --difficulty 12 16 20 # how proof of work scales
    python benchmarks/round_time.py --overrides model=cnn clients=10

Each configuration runs once in this process (the first is repeated after a warm-up) and its
summary's per-phase seconds are printed as shares of the summed round time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from torchchain.experiment import run

CONF = Path(__file__).resolve().parents[1] / "conf"
PHASES = ["train", "attack", "serialize", "hash", "sign", "validate", "aggregate", "mine", "checkpoint", "write", "fetch", "eval"]


def measure(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "runtime.progress=false"])
    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(io.StringIO()):
        return run(cfg, run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--difficulty", type=int, nargs="*", default=[16], help="proof-of-work bits to compare")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra config overrides for every run")
    args = parser.parse_args()

    measure([*args.overrides, "rounds=2"])  # warm-up: imports, allocator, data loading caches
    header = f"{'config':42s} {'acc':>6s} {'s/round':>8s} " + " ".join(f"{p[:9]:>9s}" for p in PHASES)
    print(header)
    for bits in args.difficulty:
        for extra in ([], ["attack=signflip"]):
            overrides = [*args.overrides, f"chain.difficulty={bits}", *extra]
            summary = measure(overrides)
            shares = summary["phase_share"]
            label = " ".join(overrides) or "(defaults)"
            print(
                f"{label[:42]:42s} {summary.get('final_accuracy') or 0:6.3f} {summary['median_round_seconds']:8.4f} "
                + " ".join(f"{100 * shares.get(p, 0.0):8.1f}%" for p in PHASES)
            )


if __name__ == "__main__":
    main()
