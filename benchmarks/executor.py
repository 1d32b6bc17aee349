"""Seconds per round of local training: the sequential, batched and processes executors.

Usage::

    python benchmarks/executor.py --device cpu --clients 10 --threads 2 --executors sequential processes
    python benchmarks/executor.py --device cpu --clients 20 --model mlp
    python benchmarks/executor.py --device cuda --executors sequential batched   # 100 clients
    python benchmarks/executor.py --device cuda --clients 500 --batch-clients 128 --momentum 0.9

Each of ``--clients`` clients holds ``--samples`` synthetic MNIST-like samples (1x28x28 images,
10 classes: a per-class template plus noise) and trains ``--model`` (default: the project's CNN,
``torchchain.models.CNN`` with its config defaults: channels 32, 64 and a hidden layer of 128,
421,642 parameters; ``mlp``: one hidden layer of 64, 50,890 parameters) for
one local epoch with batches of 32 and lr 0.05, exactly as a simulation round does it
(``Simulation._local_updates``): ``sequential`` loads the global model into one module and runs
``train_local`` client after client on ``--threads`` torch threads, ``batched`` runs
``train_batched`` over all of them, ``processes`` deals them to ``--workers`` single-threaded
worker processes (default: one per usable core). Each executor runs a warm-up round, then
``--repeats`` timed rounds (the executors take turns, so all see the same load on a shared
machine); the median and best are printed, with the ratios sequential / other executor and the
largest difference between each executor's deltas and the sequential ones. The warm-up round is
printed too, as ``first round``: for ``processes`` it includes starting the pool (spawning the
workers, their import of torch, building the model, sharing the clients' data), so it is the
time to the end of round 1 a run pays. Only torchchain pieces are imported (no Hydra).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from torchchain.data import DataSplit
from torchchain.models import CNN, MLP
from torchchain.runtime.client import LocalTraining
from torchchain.runtime.executor import (
    DEFAULT_BATCH_CLIENTS,
    LocalExecutor,
    train_batched,
    train_sequential,
    usable_cores,
)
from torchchain.runtime.simulation import derive_generator

MODELS = {"cnn": CNN, "mlp": MLP}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--model", default="cnn", choices=sorted(MODELS))
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--samples", type=int, default=200, help="samples per client")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--batch-clients", type=int, default=DEFAULT_BATCH_CLIENTS, help="clients per vmapped chunk")
    parser.add_argument("--workers", type=int, default=None, help="processes: worker processes (default: usable cores)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per executor (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    executors = ["sequential", "batched", "processes"]
    parser.add_argument("--executors", nargs="+", default=executors, choices=executors)
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    factory = functools.partial(MODELS[args.model], input_shape=(1, 28, 28), num_outputs=10)
    model = factory().to(device)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    datas = synthetic_clients(args.clients, args.samples)
    settings = LocalTraining(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum)
    params = sum(p.numel() for p in model.parameters())
    workers = min(args.workers or usable_cores(), args.clients)
    print(
        f"device={device} threads={torch.get_num_threads()} workers={workers} (of {usable_cores()} usable cores) "
        f"clients={args.clients} samples/client={args.samples} model={args.model} params={params:,} "
        f"epochs={args.epochs} batch={args.batch_size} lr={args.lr} momentum={args.momentum} "
        f"batch_clients={args.batch_clients} torch={torch.__version__}"
    )

    pool = LocalExecutor(
        "processes", workers=args.workers, model_factory=factory, client_data=dict(enumerate(datas))
    )
    clients = list(range(len(datas)))

    def one_round(name: str, rnd: int, buffers: list[dict]) -> list[dict[str, torch.Tensor]]:
        generators = [derive_generator(0, "train", rnd, i) for i in clients]
        common = {"device": device, "generators": generators, "momentum_buffers": buffers}
        if name == "sequential":
            return train_sequential(model, state, datas, settings, **common)
        if name == "batched":
            return train_batched(model, state, datas, settings, batch_clients=args.batch_clients, **common)
        return pool.train(model, state, datas, settings, clients=clients, **common)

    # The executors take turns round by round, so all see the same load on a shared machine.
    buffers = {name: [{} for _ in datas] for name in args.executors}
    first: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in args.executors}
    deltas: dict[str, list] = {}
    with pool:
        for rnd in range(args.repeats + 1):  # round 0 is the warm-up (and the pool's start)
            for name in args.executors:
                _sync(device)
                start = time.perf_counter()
                out = one_round(name, rnd, buffers[name])
                _sync(device)
                elapsed = time.perf_counter() - start
                if rnd:
                    times[name].append(elapsed)
                else:
                    first[name] = elapsed
                if rnd == 1:
                    deltas[name] = out
    for name in args.executors:
        median = statistics.median(times[name])
        print(
            f"{name:10s} {median:8.3f} s/round median, {min(times[name]):8.3f} best  "
            f"({median / args.clients * 1000:7.2f} ms/client; rounds: {', '.join(f'{t:.3f}' for t in times[name])}; "
            f"first round {first[name]:.3f} s{' incl. pool start' if name == 'processes' else ''})"
        )
    if "sequential" in times:
        seq = times["sequential"]
        for name in [n for n in args.executors if n != "sequential"]:
            other = times[name]
            diff = max((a[k] - b[k]).abs().max().item() for a, b in zip(deltas["sequential"], deltas[name]) for k in a)
            print(
                f"speed-up sequential/{name} = {statistics.median(seq) / statistics.median(other):.2f}x median, "
                f"{min(seq) / min(other):.2f}x best; to the end of round 1: {first['sequential']:.3f} s against "
                f"{first[name]:.3f} s; max |delta_seq - delta_{name}| after round 1 = {diff:.2e}"
            )


if __name__ == "__main__":
    main()
