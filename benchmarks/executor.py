"""Seconds per round of local training: the sequential executor against the batched one.

Usage::

    python benchmarks/executor.py --device cpu --clients 20
    python benchmarks/executor.py --device cuda              # 100 clients
    python benchmarks/executor.py --device cuda --clients 500 --batch-clients 128 --momentum 0.9

Each of ``--clients`` clients holds ``--samples`` synthetic MNIST-like samples (1x28x28 images,
10 classes: a per-class template plus noise) and trains the project's CNN (``torchchain.models.CNN``
with its config defaults: channels 32, 64 and a hidden layer of 128, 421,642 parameters) for
one local epoch with batches of 32 and lr 0.05, exactly as a simulation round does it
(``Simulation._local_updates``): ``sequential`` loads the global model into one module and runs
``train_local`` client after client, ``batched`` runs ``train_batched`` over all of them. Each
executor runs a warm-up round, then ``--repeats`` timed rounds (the executors take turns, so both
see the same load on a shared machine); the median and best are printed, with the ratios
sequential / batched and the largest difference between the two executors' deltas.
Only torchchain pieces are imported (no Hydra).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from torchchain.data import DataSplit
from torchchain.models import CNN
from torchchain.runtime.client import LocalTraining, train_local
from torchchain.runtime.executor import DEFAULT_BATCH_CLIENTS, train_batched
from torchchain.runtime.simulation import derive_generator
from torchchain.updates.delta import compute_delta


def synthetic_clients(clients: int, samples: int, seed: int = 0) -> list[DataSplit]:
    """MNIST-like data: each class a fixed random 28x28 template, each sample template + noise."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.rand(10, 1, 28, 28, generator=gen)
    out = []
    for _ in range(clients):
        y = torch.randint(0, 10, (samples,), generator=gen)
        x = (templates[y] + 0.5 * torch.randn(samples, 1, 28, 28, generator=gen)).clamp_(0, 1)
        out.append(DataSplit(features=x, targets=y))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sequential_round(model, state, datas, settings, device, rnd, buffers):
    deltas = []
    for i, data in enumerate(datas):
        model.load_state_dict(state)
        train_local(model, data, settings, device=device, generator=derive_generator(0, "train", rnd, i),
                    momentum_buffers=buffers[i])
        deltas.append(compute_delta(model.state_dict(), state))
    return deltas


def batched_round(model, state, datas, settings, device, rnd, buffers, batch_clients):
    generators = [derive_generator(0, "train", rnd, i) for i in range(len(datas))]
    return train_batched(model, state, datas, settings, device=device, generators=generators,
                         momentum_buffers=buffers, batch_clients=batch_clients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--samples", type=int, default=200, help="samples per client")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--batch-clients", type=int, default=DEFAULT_BATCH_CLIENTS, help="clients per vmapped chunk")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per executor (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--executors", nargs="+", default=["sequential", "batched"], choices=["sequential", "batched"])
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = CNN(input_shape=(1, 28, 28), num_outputs=10).to(device)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    datas = synthetic_clients(args.clients, args.samples)
    settings = LocalTraining(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"device={device} threads={torch.get_num_threads()} clients={args.clients} samples/client={args.samples} "
        f"CNN params={params:,} epochs={args.epochs} batch={args.batch_size} lr={args.lr} momentum={args.momentum} "
        f"batch_clients={args.batch_clients} torch={torch.__version__}"
    )

    # The executors take turns round by round, so both see the same load on a shared machine.
    buffers = {name: [{} for _ in datas] for name in args.executors}
    times: dict[str, list[float]] = {name: [] for name in args.executors}
    deltas: dict[str, list] = {}
    for rnd in range(args.repeats + 1):  # round 0 is the warm-up
        for name in args.executors:
            _sync(device)
            start = time.perf_counter()
            if name == "sequential":
                out = sequential_round(model, state, datas, settings, device, rnd, buffers[name])
            else:
                out = batched_round(model, state, datas, settings, device, rnd, buffers[name], args.batch_clients)
            _sync(device)
            if rnd:
                times[name].append(time.perf_counter() - start)
            if rnd == 1:
                deltas[name] = out
    for name in args.executors:
        median = statistics.median(times[name])
        print(f"{name:10s} {median:8.3f} s/round median, {min(times[name]):8.3f} best  "
              f"({median / args.clients * 1000:7.2f} ms/client; rounds: {', '.join(f'{t:.3f}' for t in times[name])})")
    if len(times) == 2:
        seq, bat = times["sequential"], times["batched"]
        diff = max(
            (a[k] - b[k]).abs().max().item() for a, b in zip(deltas["sequential"], deltas["batched"]) for k in a
        )
        print(f"speed-up sequential/batched = {statistics.median(seq) / statistics.median(bat):.2f}x median, "
              f"{min(seq) / min(bat):.2f}x best; max |delta_seq - delta_batched| after round 1 = {diff:.2e}")

if __name__ == "__main__":
    main()
