"""What consensus among peers costs: round time, bytes on the wire, attestation latency, and the
share of a round spent agreeing, against the number of peers.

Usage::

    python benchmarks/distributed.py                          # 1, 2, 4, 8 peers; gloo and in-process
    python benchmarks/distributed.py --peers 2 4 --backends gloo --rounds 10

Every configuration trains the bundled digits data (MLP 64, median, one local epoch at lr 0.3,
seed 0) with ``--clients`` clients spread over the peers (client i on peer i mod N) for
``--rounds`` rounds at ``--difficulty`` bits. ``gloo`` starts one process per peer
(``torch.multiprocessing`` from a fork server, a free loopback port, ``torch.distributed`` with
gloo: what ``torchrun ... train.py runtime=distributed`` runs); ``inprocess`` runs the peers on
threads of this process over :class:`~torchchain.runtime.transport.InProcessNetwork`. Each peer
reports what every round cost it (:class:`~torchchain.runtime.peer.RoundStats`); the tables show

* ``round s``: the median round, over every round of every peer;
* ``train+mine s``: its local part, the median of training its clients plus mining its candidate;
* ``consensus``: the rest (exchanging bundles, race, proposal, checks, attestations, commit) as a
  share of the summed round time;
* ``bundles ms``, ``commit ms``: the medians of exchanging the round's submissions and of
  writing the block, its attestations and blobs (fsynced);
* ``attest ms``: the median time from receiving the proposal to the tally of the attestations
  (it includes the peer's own check of the block);
* ``sent/peer/round``: the mean bytes one peer's transport sent in a round, and ``sent/round``
  the sum over the peers (headers and payloads as the transport counts them; see
  :mod:`torchchain.runtime.transport`, "Traffic").

The figures are those of one machine: N processes on fewer cores measure contention for the
cores, not a network.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

SEED = 0


def _config(clients: int, difficulty: int) -> dict[str, Any]:
    return {
        "seed": SEED,
        "clients": clients,
        "byzantine": 0,
        "strategy": {"_target_": "torchchain.strategies.Median", "f": None, "pre": []},
        "chain": {"difficulty": difficulty, "max_update_mb": 64},
    }


def _task(clients: int, rounds: int, difficulty: int):
    """The data, initial model and settings every peer builds (the same in every process)."""
    from torchchain.data import load_digits
    from torchchain.models import MLP
    from torchchain.runtime.client import LocalTraining
    from torchchain.runtime.simulation import SimulationSettings

    data = load_digits(test_fraction=0.2, seed=SEED)
    torch.manual_seed(SEED)
    model = MLP(input_shape=list(data.input_shape), num_outputs=data.num_outputs, hidden=[64])
    settings = SimulationSettings(
        clients=clients, rounds=rounds, byzantine=0, seed=SEED, device=torch.device("cpu"),
        training=LocalTraining(epochs=1, batch_size=32, lr=0.3), difficulty=difficulty, progress=False,
        executor="sequential",
    )
    return data, model, settings


def _record(outcome) -> dict[str, Any]:
    return {
        "rank": outcome.rank,
        "error": None if outcome.error is None else str(outcome.error),
        "head": outcome.head,
        "accuracy": outcome.metrics.get("accuracy"),
        "stats": [
            {
                "round": s.round, "seconds": s.seconds, "consensus": s.consensus_seconds,
                "sent": s.bytes_sent, "received": s.bytes_received, "proposals": s.proposals,
            }
            for s in outcome.stats
        ],
    }


def _worker(rank: int, world: int, port: int, run_dir: str, clients: int, rounds: int, difficulty: int, timeout: float) -> None:
    """One peer in its own process, as torchrun would start it."""
    from torchchain.runtime.peer import run_peer
    from torchchain.runtime.transport import DistributedTransport

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    data, model, settings = _task(clients, rounds, difficulty)
    transport = DistributedTransport(timeout=timeout, backend="gloo")
    try:
        outcome = run_peer(
            transport, data=data, model=model, settings=settings, config=_config(clients, difficulty), run_dir=run_dir
        )
    finally:
        transport.close()
    Path(run_dir, f"peer-{rank}.json").write_text(json.dumps(_record(outcome)))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_gloo(world: int, clients: int, rounds: int, difficulty: int, timeout: float) -> list[dict[str, Any]]:
    """``world`` gloo processes on loopback; each peer's record, in rank order."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        multiprocessing.set_forkserver_preload(["torchchain.runtime.peer", "torchchain.data", "torchchain.models"])
        start_method = "forkserver"
    else:
        start_method = "spawn"
    with tempfile.TemporaryDirectory() as run_dir:
        context = mp.start_processes(
            _worker, args=(world, _free_port(), run_dir, clients, rounds, difficulty, timeout), nprocs=world,
            join=False, start_method=start_method,
        )
        while not context.join():
            pass
        return [json.loads(Path(run_dir, f"peer-{rank}.json").read_text()) for rank in range(world)]


def run_inprocess(world: int, clients: int, rounds: int, difficulty: int, timeout: float) -> list[dict[str, Any]]:
    """``world`` peers on threads of this process; each peer's record, in rank order."""
    from torchchain.runtime.peer import run_in_process

    data, model, settings = _task(clients, rounds, difficulty)
    with tempfile.TemporaryDirectory() as run_dir:
        outcomes = run_in_process(
            data=data, model=model, settings=settings, config=_config(clients, difficulty), run_dir=run_dir,
            peers=world, timeout=timeout,
        )
    return [_record(o) for o in outcomes]


def summarize(records: list[dict[str, Any]]) -> dict[str, float]:
    """The table's figures from every peer's per-round stats."""
    errors = [f"rank {r['rank']}: {r['error']}" for r in records if r["error"]]
    if errors:
        raise RuntimeError("; ".join(errors))
    if len({r["head"] for r in records}) != 1:
        raise RuntimeError("the peers ended on different heads")
    stats = [s for r in records for s in r["stats"]]
    rounds = len(records[0]["stats"])
    total = sum(s["seconds"]["round"] for s in stats)
    return {
        "round": statistics.median(s["seconds"]["round"] for s in stats),
        "local": statistics.median(s["seconds"]["train"] + s["seconds"]["mine"] for s in stats),
        "consensus": sum(s["consensus"] for s in stats) / total,
        "attest": statistics.median(s["seconds"]["attest"] for s in stats),
        "bundles": statistics.median(s["seconds"]["bundles"] for s in stats),
        "commit": statistics.median(s["seconds"]["commit"] for s in stats),
        "sent_peer": statistics.mean(s["sent"] for s in stats),
        "sent_round": sum(s["sent"] for s in stats) / rounds,
        "accuracy": records[0]["accuracy"],
    }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f}"


def table(rows: list[tuple[int, dict[str, float]]]) -> str:
    lines = [
        "| peers | round s | train+mine s | consensus | bundles ms | attest ms | commit ms | sent/peer/round "
        "| sent/round | accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for peers, r in rows:
        lines.append(
            f"| {peers} | {r['round']:.3f} | {r['local']:.3f} | {100 * r['consensus']:.0f}% | {1000 * r['bundles']:.1f} "
            f"| {1000 * r['attest']:.1f} | {1000 * r['commit']:.1f} "
            f"| {_size(r['sent_peer'])} | {_size(r['sent_round'])} | {r['accuracy']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--backends", nargs="+", default=["gloo", "inprocess"], choices=["gloo", "inprocess"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--difficulty", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds each exchange waits")
    args = parser.parse_args()

    print(
        f"digits, MLP 64, median, clients={args.clients}, rounds={args.rounds}, difficulty={args.difficulty}; "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, Python {platform.python_version()}\n"
    )
    runners = {"gloo": run_gloo, "inprocess": run_inprocess}
    titles = {"gloo": "gloo, one process per peer (loopback)", "inprocess": "in process, one thread per peer"}
    for backend in args.backends:
        rows = []
        for peers in args.peers:
            started = time.perf_counter()
            records = runners[backend](peers, args.clients, args.rounds, args.difficulty, args.timeout)
            rows.append((peers, summarize(records)))
            print(f"  {backend}, {peers} peers: {time.perf_counter() - started:.1f} s", file=sys.stderr)
        print(f"### {titles[backend]}\n\n{table(rows)}\n", flush=True)


if __name__ == "__main__":
    main()
