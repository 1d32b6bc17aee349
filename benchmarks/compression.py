"""Update codecs: bytes, ledger growth, accuracy and encode/decode speed, side by side.

Usage::

    python benchmarks/compression.py --part speed                 # seconds; no data needed
    python benchmarks/compression.py --part train --rounds 60     # MNIST from ../shared/data

``speed`` encodes and decodes one update the size of the CNN's (421,642 float32 parameters,
a random-normal update) with every codec setting, in one process, and prints bytes per update,
the ratio to float32, the worst relative error of the decoded update, and encode/decode
throughput in MB/s of float32 input (median of ``--repeats``, after one warm-up call).

``train`` runs ``torchchain.experiment.run`` once per codec setting and partition on MNIST
from ``../shared/data`` (25 clients, the CNN, FedAvg, ``--rounds`` rounds, 5 local steps of
batch 32 at lr 0.05 with momentum 0.9) and prints final accuracy, mean bytes per update and
ledger bytes per round, with the difference to ``none`` in accuracy points. It also projects the
ledger of a 600-round run with ``chain.keep_updates``: 600 x (model + block + state per round)
+ keep x 25 x bytes per update.

Both write a Markdown table to ``--out`` (default ``benchmarks/results/compression``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchchain.updates.codecs import Codec, NoCodec, Quantize, RotateQuantize, TopK, codec_seed  # noqa: E402

#: (name on the command line, codec, Hydra overrides)
SETTINGS: list[tuple[str, Codec, list[str]]] = [
    ("none", NoCodec(), ["codec=none"]),
    ("quantize/8", Quantize(bits=8), ["codec=quantize", "codec.bits=8"]),
    ("rotate_quantize/8", RotateQuantize(bits=8), ["codec=rotate_quantize", "codec.bits=8"]),
    ("rotate_quantize/4", RotateQuantize(bits=4), ["codec=rotate_quantize", "codec.bits=4"]),
    ("rotate_quantize/2", RotateQuantize(bits=2), ["codec=rotate_quantize", "codec.bits=2"]),
    ("topk/0.1", TopK(fraction=0.1), ["codec=topk", "codec.fraction=0.1"]),
]

CNN_SHAPES = {
    "conv.0.weight": (32, 1, 3, 3), "conv.0.bias": (32,), "conv.3.weight": (64, 32, 3, 3), "conv.3.bias": (64,),
    "fc.0.weight": (128, 3136), "fc.0.bias": (128,), "fc.2.weight": (10, 128), "fc.2.bias": (10,),
}


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def speed(repeats: int) -> str:
    g = torch.Generator().manual_seed(0)
    update = {k: torch.randn(shape, generator=g) * 1e-2 for k, shape in CNN_SHAPES.items()}
    template = {k: torch.zeros_like(v) for k, v in update.items()}
    numel = sum(v.numel() for v in update.values())
    raw = numel * 4
    seed = codec_seed(1, "ab" * 32)
    rows = []
    for name, codec, _ in SETTINGS:
        encode_s, decode_s = [], []
        warm = codec.encode(update, seed=seed, generator=torch.Generator().manual_seed(99))  # first-call costs
        codec.decode(warm, template, seed=seed, max_bytes=len(warm))
        for r in range(repeats):
            rng = torch.Generator().manual_seed(r)
            t0 = time.perf_counter()
            payload = codec.encode(update, seed=seed, generator=rng)
            t1 = time.perf_counter()
            decoded = codec.decode(payload, template, seed=seed, max_bytes=len(payload))
            t2 = time.perf_counter()
            encode_s.append(t1 - t0)
            decode_s.append(t2 - t1)
        error = max(float((decoded[k] - update[k]).norm() / update[k].norm()) for k in update)
        rows.append([
            name, f"{len(payload):,}", f"{raw / len(payload):.2f}x", f"{error:.4f}",
            f"{raw / statistics.median(encode_s) / 1e6:.0f}", f"{raw / statistics.median(decode_s) / 1e6:.0f}",
        ])
    header = ["codec", "bytes per update", "smaller than float32", "worst relative error (per tensor)",
              "encode MB/s", "decode MB/s"]
    return f"One {numel:,}-parameter update (the CNN's), median of {repeats} runs:\n\n" + _markdown(header, rows)


def train(rounds: int, partitions: list[str], names: list[str], keep: int) -> str:
    from hydra import compose, initialize_config_dir

    from torchchain.experiment import run

    data_root = ROOT.parent / "shared" / "data"
    if not (data_root / "MNIST" / "raw").is_dir():
        raise SystemExit(f"MNIST is not in {data_root}; this part needs ../shared/data")
    base = [
        "dataset=mnist", f"dataset.root={data_root}", "dataset.download=false", "model=cnn", "clients=25",
        "strategy=fedavg", "local_epochs=1", "local_steps=5", "batch_size=32", "lr=0.05", "momentum=0.9",
        f"rounds={rounds}", f"runtime.eval_every={rounds}", "runtime.progress=false", "chain.difficulty=12",
    ]
    results: dict[tuple[str, str], dict] = {}
    out_root = ROOT / "outputs" / "compression"
    for partition in partitions:
        for name, _, overrides in SETTINGS:
            if name not in names:
                continue
            run_dir = out_root / f"{partition}-{name.replace('/', '_')}"
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                cfg = compose("config", overrides=[*base, f"partition.kind={partition}", *overrides])
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                summary = run(cfg, run_dir)
            summary["wall"] = time.perf_counter() - start
            results[partition, name] = summary
            print(f"{partition} {name}: accuracy {summary['final_accuracy']:.4f}, "
                  f"{summary['mean_update_bytes']:,.0f} B/update, {summary['ledger_bytes'] / rounds:,.0f} B/round, "
                  f"{summary['wall']:.0f} s", flush=True)
    rows = []
    for (partition, name), summary in results.items():
        reference = results.get((partition, "none"))
        delta = "" if reference is None else f"{100 * (summary['final_accuracy'] - reference['final_accuracy']):+.2f}"
        per_round = summary["ledger_bytes"] / rounds
        updates_per_round = 25 * summary["mean_update_bytes"]
        fixed = per_round - updates_per_round
        projected = 600 * fixed + keep * updates_per_round
        rows.append([
            partition, name, f"{summary['final_accuracy']:.4f}", delta, f"{summary['mean_update_bytes']:,.0f}",
            f"{per_round / 1e6:.2f}", f"{600 * per_round / 1e9:.2f}", f"{projected / 1e9:.2f}",
        ])
    header = ["partition", "codec", "accuracy", "vs none (points)", "bytes per update", "ledger MB per round",
              "600 rounds, all kept (GB)", f"600 rounds, keep_updates={keep} (GB)"]
    return (f"MNIST, 25 clients, CNN, FedAvg, {rounds} rounds of 5 local steps (batch 32, lr 0.05, momentum 0.9), "
            "seed 0:\n\n" + _markdown(header, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["speed", "train"], required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--partitions", default="iid,shards")
    parser.add_argument("--codecs", default=",".join(name for name, _, _ in SETTINGS))
    parser.add_argument("--keep", type=int, default=50, help="keep_updates for the 600-round projection")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compression")
    args = parser.parse_args()
    if args.part == "speed":
        table = speed(args.repeats)
    else:
        table = train(args.rounds, args.partitions.split(","), args.codecs.split(","), args.keep)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.part}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
