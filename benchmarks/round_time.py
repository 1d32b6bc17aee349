"""Round time: torchchain against a plain PyTorch loop and Flower's simulation, and where a round's time goes.

Usage::

    python benchmarks/round_time.py --flower-python /work/flwr-venv/bin/python   # both workloads, 3 repetitions
    python benchmarks/round_time.py --flower-python ... --threads 0 1             # also rows with 1 torch thread
    python benchmarks/round_time.py --workloads mnistlike --reps 5 --executors sequential
    python benchmarks/round_time.py --difficulty 12 16 20                         # per-phase shares
    python benchmarks/round_time.py --difficulty 16 --overrides model=cnn clients=10

**Comparison** (the default). Two fixed workloads, the same for every system: the same data,
client partitions (torchchain's IID partition of seed 0, computed once by
``torchchain.data.partition``) and initial model (torchchain's, built after
``torch.manual_seed(0)`` exactly as a run builds it, and checked against the genesis block's
model hash); 10 clients, every client every round, 1 local epoch of SGD with batch 32 and
lr 0.05, sample-weighted FedAvg, the global model evaluated on the test split after every round:

``digits``
    scikit-learn's digits with torchchain's stratified 80/20 split (``dataset=digits``), MLP
    64-128-10 (``model=mlp model.hidden=[128]``), 20 rounds.
``mnistlike``
    20,000 synthetic 1x28x28 training images and 2,000 test images (each class a fixed random
    template of lit blocks, shifted by up to 2 pixels, plus noise), written as MNIST IDX files
    and read by torchchain's own loader (``dataset=mnist dataset.download=false``), LeNet-5
    (``model=lenet``), 5 rounds.

Systems, each run as a subprocess of this script (``--worker``):

``torchchain-<executor>``
    ``torchchain.experiment.run`` on the config composed from ``conf/`` with the overrides
    above, ``strategy=fedavg``, ``chain.difficulty=16`` and every other key at its default, one
    row per ``runtime.executor`` in ``torchchain.runtime.executor.EXECUTORS`` (``auto``
    excepted). The worker reads each round's end time, duration and per-phase seconds
    (``mine`` among them) from the run's ``rounds.jsonl``.
``plain``
    One process, one model: the clients train one after another, their states are averaged by
    sample count, the average is evaluated. No signatures, no ledger.
``flower``
    Flower's simulation runtime (``flwr.simulation.run_simulation`` with a ``ClientApp`` and a
    ``ServerApp`` running ``flwr.serverapp.strategy.FedAvg`` with ``fraction_train=1``,
    ``fraction_evaluate=0`` and a centralised ``evaluate_fn`` on the test split), Ray backend,
    ``client_resources={"num_cpus": 1}`` on Ray's default local cluster. Each client call loads
    its partition from a file, as a Flower client reads its local data. It runs with
    ``--flower-python`` (default: this interpreter) and is skipped, with a note, when
    ``import flwr`` fails there. Plain and Flower clients share one training function.

torchchain and the plain loop run with torch's default number of threads (one per core), or
with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set to each value of ``--threads`` (``0``: the
default), one set of rows per value, side by side; Ray sets one thread per Flower client.

A round lasts from the end of the previous round (for round 1: the start of its training; for
Flower: the end of the initial evaluation) to the end of its evaluation. Launch to round 1 is
from just before the subprocess starts to the end of round 1's evaluation. Peak memory is the
largest sum of the resident set sizes of every process below this script (polled every 50 ms;
the script is a child subreaper, so processes that detach from the worker are still counted),
which double-counts pages the processes share. After a warm-up run of one round per system
(``--no-warmup`` skips it), ``--reps`` repetitions run; in each the systems run one after
another, starting one system later each repetition, so load from other work spreads over
them. The tables give medians over repetitions (of each run's median round) and ratios to
Flower's medians. They are written, with every round of every run, to
``benchmarks/results/round_time/round_time.{md,json}`` (``--results``).

**Per-phase shares** (``--difficulty``, optionally ``--overrides``): each configuration runs
once in this process (after a warm-up run) and its summary's per-phase seconds are printed as
shares of the summed round time.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
RESULTS = ROOT / "benchmarks" / "results" / "round_time"
PHASES = ["train", "attack", "serialize", "hash", "sign", "validate", "aggregate", "mine", "checkpoint", "write", "fetch", "eval"]

SEED = 0
CLIENTS = 10
#: What both workloads share; everything else stays at torchchain's defaults.
COMMON = [
    f"seed={SEED}", f"clients={CLIENTS}", "partition.kind=iid", "local_epochs=1", "batch_size=32", "lr=0.05",
    "strategy=fedavg", "chain.difficulty=16", "runtime.eval_every=1", "runtime.progress=false",
]
WORKLOADS: dict[str, dict[str, Any]] = {
    "digits": {
        "title": "W-digits: scikit-learn digits (80/20), 10 IID clients, MLP 64-128-10, 20 rounds",
        "overrides": ["dataset=digits", "model=mlp", "model.hidden=[128]", "rounds=20"],
        "rounds": 20,
    },
    "mnistlike": {
        "title": "W-mnistlike: 20,000 synthetic 1x28x28 images, 10 IID clients, LeNet-5, 5 rounds",
        "overrides": ["dataset=mnist", "dataset.root={root}", "dataset.download=false", "model=lenet", "rounds=5"],
        "rounds": 5,
        "train": 20_000,
        "test": 2_000,
    },
}
#: (workload, measure, most torchchain / Flower may be); measure "round_no_mine" excludes proof of work.
TARGETS = [
    ("mnistlike", "round", 0.7),
    ("digits", "round_no_mine", 0.1),
    ("digits", "launch", 0.3),
    ("mnistlike", "launch", 0.3),
    ("digits", "rss", 0.35),
    ("mnistlike", "rss", 0.35),
]
MEASURES = {
    "round": "median s/round",
    "round_no_mine": "median s/round without mining",
    "launch": "launch to end of round 1",
    "rss": "peak RSS of the process tree",
}
POLL_SECONDS = 0.05
WORKER_TIMEOUT = 1800


# -- the synthetic MNIST-like data ---------------------------------------------------------------


def write_mnistlike(root: Path, *, train: int, test: int, seed: int = SEED) -> None:
    """Write ``train`` + ``test`` learnable 28x28 images as MNIST IDX files under ``root/MNIST/raw``.

    Each class is a fixed random template: 4x4-pixel blocks on a 7x7 grid, each lit (255) with
    probability 0.3 on a black background, so that the template stays recognisable when shifted.
    An image is its class's template shifted by -2..2 pixels in each direction, times 0.8, plus
    Gaussian noise of standard deviation 80, clipped to uint8. Everything is drawn from
    ``numpy`` seeded by ``seed``. LeNet-5 with this benchmark's FedAvg settings reaches about
    99% test accuracy by round 4.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    templates = np.kron((rng.random((10, 7, 7)) < 0.3) * 255.0, np.ones((4, 4)))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, size=count)
        shifts = rng.integers(-2, 3, size=(count, 2))
        images = np.empty((count, 28, 28), dtype=np.uint8)
        for i, (label, (dy, dx)) in enumerate(zip(labels, shifts)):
            image = 0.8 * np.roll(templates[label], (dy, dx), axis=(0, 1)) + rng.normal(0, 80, size=(28, 28))
            images[i] = np.clip(image, 0, 255).astype(np.uint8)
        header = np.array([0x803, count, 28, 28], dtype=">i4").tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        header = np.array([0x801, count], dtype=">i4").tobytes()
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(header + labels.astype(np.uint8).tobytes())


# -- one workload, prepared once for every system -------------------------------------------------


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def prepare(name: str, folder: Path) -> dict[str, Any]:
    """Write ``name``'s data, partitions and initial model into ``folder``; return its spec.

    The data come from torchchain's loader for the composed config, the partitions from
    ``torchchain.data.partition.partition`` and the initial model from the config's model
    class after ``torch.manual_seed(seed)``: what ``torchchain.experiment.run`` builds.
    """
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from torchchain.chain.crypto import sha256_hex
    from torchchain.data.partition import partition
    from torchchain.updates.serialize import update_to_bytes

    workload = WORKLOADS[name]
    folder.mkdir(parents=True)
    if name == "mnistlike":
        write_mnistlike(folder / "data", train=workload["train"], test=workload["test"])
    overrides = [*COMMON, *(o.format(root=folder / "data") for o in workload["overrides"])]
    cfg = _compose(overrides)
    torch.manual_seed(int(cfg.seed))  # as run() does, before the data and the model
    data = instantiate(cfg.dataset, _convert_="all")
    model_node = OmegaConf.to_container(cfg.model, resolve=True)
    model = instantiate(cfg.model, input_shape=list(data.input_shape), num_outputs=data.num_outputs, _convert_="all")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    parts = partition(str(cfg.partition.kind), data.train.targets, int(cfg.clients), seed=int(cfg.seed))
    for i, idx in enumerate(parts):
        torch.save({"x": data.train.features[idx].clone(), "y": data.train.targets[idx].clone()}, folder / f"client_{i}.pt")
    torch.save({"x": data.test.features, "y": data.test.targets}, folder / "test.pt")
    torch.save(state, folder / "init.pt")
    spec = {
        "name": name,
        "overrides": overrides,
        "rounds": int(cfg.rounds),
        "clients": int(cfg.clients),
        "seed": int(cfg.seed),
        "lr": float(cfg.lr),
        "batch_size": int(cfg.batch_size),
        "model": {
            "target": model_node.pop("_target_"),
            "kwargs": model_node,
            "input_shape": list(data.input_shape),
            "num_outputs": data.num_outputs,
        },
        "parameters": sum(v.numel() for v in state.values()),
        "train_samples": len(data.train),
        "test_samples": len(data.test),
        "init_model_hash": sha256_hex(update_to_bytes(state)),
    }
    (folder / "spec.json").write_text(json.dumps(spec, indent=2))
    return spec


# -- training shared by the plain loop and Flower's clients --------------------------------------


def _build_model(spec: dict[str, Any]):
    import importlib

    module, cls = spec["target"].rsplit(".", 1)
    model_cls = getattr(importlib.import_module(module), cls)
    return model_cls(input_shape=spec["input_shape"], num_outputs=spec["num_outputs"], **spec["kwargs"])


def _train_epoch(model, x, y, *, lr: float, batch_size: int, seed: int) -> None:
    """One epoch of SGD over ``(x, y)`` in a shuffled order drawn from ``seed``."""
    import torch
    import torch.nn.functional as F

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    for idx in order.split(batch_size):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()


def _accuracy(model, x, y, batch_size: int = 1024) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            correct += (model(x[start : start + batch_size]).argmax(dim=1) == y[start : start + batch_size]).sum().item()
    return correct / len(y)


def _client_seed(seed: int, round: int, client: int) -> int:
    return (seed * 1_000_003 + round) * 1_009 + client


# -- workers: one system on one workload, in its own process -------------------------------------


def _torchchain_worker(folder: Path, spec: dict[str, Any], executor: str, rounds: int) -> dict[str, Any]:
    from torchchain.chain.ledger import Ledger
    from torchchain.experiment import run

    cfg = _compose([*spec["overrides"], f"rounds={rounds}", f"runtime.executor={executor}"])
    with tempfile.TemporaryDirectory(dir=folder) as run_dir:
        summary = run(cfg, run_dir)
        genesis_hash = Ledger.open(Path(run_dir) / "ledger").genesis.header.model_hash
        lines = [json.loads(line) for line in (Path(run_dir) / "rounds.jsonl").read_text().splitlines()]
    records = [
        {
            "round": line["round"],
            "start": line["unix_time"] - line["time/round_seconds"],
            "end": line["unix_time"],
            "phases": {k[len("time/"):]: v for k, v in line.items() if k.startswith("time/") and k != "time/round_seconds"},
            "accuracy": line.get("eval/accuracy"),
        }
        for line in lines
    ]
    return {
        "rounds": records,
        "final_accuracy": summary.get("final_accuracy"),
        "init_model_hash": genesis_hash,
        "phase_seconds": summary.get("phase_seconds"),
    }


def _plain_worker(folder: Path, spec: dict[str, Any], rounds: int) -> dict[str, Any]:
    import torch

    clients = [torch.load(folder / f"client_{i}.pt", weights_only=True) for i in range(spec["clients"])]
    test = torch.load(folder / "test.pt", weights_only=True)
    model = _build_model(spec["model"])
    global_state = torch.load(folder / "init.pt", weights_only=True)
    records = []
    for rnd in range(1, rounds + 1):
        start = time.time()
        total = {k: torch.zeros_like(v) for k, v in global_state.items()}
        for cid, data in enumerate(clients):
            model.load_state_dict(global_state)
            seed = _client_seed(spec["seed"], rnd, cid)
            _train_epoch(model, data["x"], data["y"], lr=spec["lr"], batch_size=spec["batch_size"], seed=seed)
            for k, v in model.state_dict().items():
                total[k] += len(data["y"]) * v
        samples = sum(len(data["y"]) for data in clients)
        global_state = {k: v / samples for k, v in total.items()}
        model.load_state_dict(global_state)
        accuracy = _accuracy(model, test["x"], test["y"])
        records.append({"round": rnd, "start": start, "end": time.time(), "accuracy": accuracy})
    return {"rounds": records, "final_accuracy": records[-1]["accuracy"]}


def _flower_worker(folder: Path, spec: dict[str, Any], rounds: int) -> dict[str, Any]:
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        cid = int(context.node_config["partition-id"])
        data = torch.load(folder / f"client_{cid}.pt", weights_only=True)
        model = _build_model(spec["model"])
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        seed = _client_seed(spec["seed"], int(msg.content["config"]["server-round"]), cid)
        _train_epoch(model, data["x"], data["y"], lr=spec["lr"], batch_size=spec["batch_size"], seed=seed)
        reply = RecordDict(
            {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(data["y"])})}
        )
        return Message(content=reply, reply_to=msg)

    test = torch.load(folder / "test.pt", weights_only=True)
    evaluator = _build_model(spec["model"])
    ends: dict[int, float] = {}
    accuracies: dict[int, float] = {}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        evaluator.load_state_dict(arrays.to_torch_state_dict())
        accuracies[server_round] = _accuracy(evaluator, test["x"], test["y"])
        ends[server_round] = time.time()
        return MetricRecord({"accuracy": accuracies[server_round]})

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=spec["clients"],
            min_available_nodes=spec["clients"],
        )
        strategy.start(
            grid=grid, initial_arrays=ArrayRecord(torch.load(folder / "init.pt", weights_only=True)), num_rounds=rounds,
            evaluate_fn=evaluate,
        )

    run_simulation(
        server_app=server_app, client_app=client_app, num_supernodes=spec["clients"],
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    if len(ends) != rounds + 1:
        raise RuntimeError(f"Flower's simulation ended after {len(ends) - 1} of {rounds} rounds; see its log")
    records = [
        {"round": r, "start": ends[r - 1], "end": ends[r], "accuracy": accuracies[r]} for r in range(1, rounds + 1)
    ]
    return {"rounds": records, "final_accuracy": accuracies[rounds]}


def worker_main(system: str, folder: Path, out: Path, rounds: int | None) -> None:
    spec = json.loads((folder / "spec.json").read_text())
    rounds = rounds or spec["rounds"]
    if system.startswith("torchchain-"):
        result = _torchchain_worker(folder, spec, system.removeprefix("torchchain-"), rounds)
    elif system == "plain":
        result = _plain_worker(folder, spec, rounds)
    elif system == "flower":
        result = _flower_worker(folder, spec, rounds)
    else:
        raise SystemExit(f"unknown system {system!r}")
    out.write_text(json.dumps(result))


# -- the parent: launch, watch memory, collect -----------------------------------------------------


def _become_subreaper() -> None:
    """Orphans of the workers (daemons some frameworks start) become this process's children."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _tree_rss(me) -> int:
    import psutil

    total = 0
    for proc in me.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            total += proc.memory_info().rss
    return total


def _end_leftovers(me) -> int:
    """Terminate what the worker left running (it is ours); return how many there were."""
    import psutil

    left = me.children(recursive=True)
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(left, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)
    return len(left)


def launch(system: str, folder: Path, python: str, *, rounds: int | None = None, threads: int = 0) -> dict[str, Any]:
    """Run one worker (``threads``: OMP/MKL threads, 0 for torch's default); return its rounds
    with the launch time, the peak RSS of the process tree and the load average at launch."""
    import psutil

    me = psutil.Process()
    out = folder / f"{system}-{threads}.json"
    out.unlink(missing_ok=True)
    command = [python, str(Path(__file__).resolve()), "--worker", system, "--workload-dir", str(folder), "--worker-out", str(out)]
    if rounds:
        command += ["--rounds", str(rounds)]
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    load = os.getloadavg()[0]
    peak = 0
    with open(out.with_suffix(".log"), "w") as log:
        launched = time.time()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        while proc.poll() is None:
            peak = max(peak, _tree_rss(me))
            if time.time() - launched > WORKER_TIMEOUT:
                proc.kill()
            time.sleep(POLL_SECONDS)
        finished = time.time()
    leftovers = _end_leftovers(me)
    if proc.returncode != 0 or not out.is_file():
        tail = out.with_suffix(".log").read_text().splitlines()[-25:]
        raise RuntimeError(f"{system} on {folder.name} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    result = json.loads(out.read_text())
    result.update(launched=launched, wall=finished - launched, peak_rss=peak, load=load, leftovers=leftovers)
    return result


def round_stats(result: dict[str, Any]) -> dict[str, Any]:
    """One run's median round, median mining, median round without mining, launch to round 1."""
    rounds = result["rounds"]
    durations = [rounds[0]["end"] - rounds[0]["start"]]
    durations += [b["end"] - a["end"] for a, b in zip(rounds, rounds[1:])]
    mine = [r.get("phases", {}).get("mine", 0.0) for r in rounds]
    stats = {
        "round": statistics.median(durations),
        "round_no_mine": statistics.median(d - m for d, m in zip(durations, mine)),
        "launch": rounds[0]["end"] - result["launched"],
        "rss": result["peak_rss"] / 2**20,
        "accuracy": result["final_accuracy"],
        "durations": durations,
    }
    if "phases" in rounds[0]:
        stats["mine"] = statistics.median(mine)
        phases = [{**r["phases"], "other": d - sum(r["phases"].values())} for r, d in zip(rounds, durations)]
        stats["phases"] = {p: statistics.median(ph.get(p, 0.0) for ph in phases) for p in phases[0]}
    return stats


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians (and ranges) over repetitions of each run's statistics."""
    per_run = [round_stats(r) for r in runs]
    summary: dict[str, Any] = {"reps": len(runs)}
    for key in ("round", "round_no_mine", "mine", "launch", "rss", "accuracy"):
        values = [s[key] for s in per_run if s.get(key) is not None]
        if values:
            summary[key] = statistics.median(values)
            summary[f"{key}_range"] = [min(values), max(values)]
    if "phases" in per_run[0]:
        summary["phases"] = {p: statistics.median(s["phases"].get(p, 0.0) for s in per_run) for p in per_run[0]["phases"]}
    summary["load"] = [r["load"] for r in runs]
    summary["leftovers"] = max(r["leftovers"] for r in runs)
    return summary


# -- tables -------------------------------------------------------------------------------------


def _ratio(value: float | None, reference: float | None) -> str:
    return "-" if value is None or not reference else f"{value / reference:.3f}"


def table(name: str, summaries: dict[str, dict[str, Any]]) -> list[str]:
    """A markdown table: one row per system, ratios to Flower's medians."""
    flower = summaries.get("flower", {})
    rows = [
        f"**{WORKLOADS[name]['title']}**",
        "",
        "| system | s/round | mining s/round | s/round w/o mining | launch → end of round 1 (s) | peak tree RSS (MiB) "
        "| final acc. | round / Flower | w/o mining / Flower | launch / Flower | RSS / Flower |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for system, s in summaries.items():
        lo, hi = s["round_range"]
        mine = f"{s['mine']:.4f}" if "mine" in s else "-"
        no_mine = f"{s['round_no_mine']:.4f}" if "mine" in s else "-"
        rows.append(
            f"| {system} | {s['round']:.4f} ({lo:.4f}–{hi:.4f}) | {mine} | {no_mine} | {s['launch']:.2f} "
            f"| {s['rss']:,.0f} | {s['accuracy']:.4f} | {_ratio(s['round'], flower.get('round'))} "
            f"| {_ratio(s['round_no_mine'], flower.get('round')) if 'mine' in s else '-'} "
            f"| {_ratio(s['launch'], flower.get('launch'))} | {_ratio(s['rss'], flower.get('rss'))} |"
        )
    return rows


def target_table(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    rows = ["| workload | torchchain / Flower | target | " + " | ".join(_torchchain_rows(results)) + " |"]
    rows.append("|---|---|---|" + "---|" * len(_torchchain_rows(results)))
    for workload, measure, limit in TARGETS:
        flower = results.get(workload, {}).get("flower")
        if flower is None:
            continue
        cells = []
        for system in _torchchain_rows(results):
            s = results[workload].get(system)
            if s is None:
                cells.append("-")
                continue
            ratio = s[measure] / flower["round" if measure == "round_no_mine" else measure]
            cells.append(f"{ratio:.3f} {'met' if ratio <= limit else '**not met**'}")
        rows.append(f"| {workload} | {MEASURES[measure]} | ≤ {limit} | " + " | ".join(cells) + " |")
    return rows


def _torchchain_rows(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    names: list[str] = []
    for summaries in results.values():
        names += [s for s in summaries if s.startswith("torchchain-") and s not in names]
    return names


def phase_lines(name: str, summaries: dict[str, dict[str, Any]]) -> list[str]:
    """Each torchchain row's median seconds per phase; ``other`` is the round's time outside the
    phases the simulation times (logging to TensorBoard, the progress loop, between rounds)."""
    lines = []
    for system, s in summaries.items():
        if "phases" in s:
            total = sum(s["phases"].values()) or 1.0
            parts = ", ".join(
                f"{p} {1000 * v:.1f} ms ({100 * v / total:.0f}%)"
                for p, v in sorted(s["phases"].items(), key=lambda kv: -kv[1])
                if v >= 0.0005
            )
            lines.append(f"- {name}, {system}, median round by phase ({total:.3f} s in all): {parts}")
    return lines


# -- the comparison -------------------------------------------------------------------------------


def _flower_available(python: str) -> str | None:
    """Flower's version in ``python``, or None when ``import flwr`` fails there."""
    probe = subprocess.run(
        [python, "-c", "import flwr, ray; print(flwr.__version__, ray.__version__)"], capture_output=True, text=True
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def compare(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("psutil") is None:
        raise SystemExit("the comparison polls memory with psutil: pip install -e .[bench]")
    import torch

    from torchchain.runtime.executor import EXECUTORS

    _become_subreaper()
    executors = args.executors or [e for e in EXECUTORS if e != "auto"]
    # (row label, system, threads): Flower keeps Ray's one thread per client (num_cpus=1).
    rows = [
        (system if threads == 0 else f"{system}, {threads} thread{'s' * (threads > 1)}", system, threads)
        for threads in args.threads
        for system in [*(f"torchchain-{e}" for e in executors), "plain"]
    ]
    flower_version = _flower_available(args.flower_python)
    if flower_version is None:
        print(f"note: `import flwr, ray` fails in {args.flower_python}; the Flower rows are skipped "
              f"(pip install 'flwr[simulation]' there, or pass --flower-python)")
    else:
        rows.append(("flower", "flower", 0))
    python = {"flower": args.flower_python}

    started = time.time()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    raw: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="round_time-") as tmp:
        for name in args.workloads:
            folder = Path(tmp) / name
            spec = prepare(name, folder)
            print(f"\n{WORKLOADS[name]['title']}: {spec['parameters']:,} parameters, "
                  f"{spec['train_samples']:,} train / {spec['test_samples']:,} test samples", flush=True)
            if args.warmup:
                for _, system, threads in rows:
                    launch(system, folder, python.get(system, sys.executable), rounds=1, threads=threads)
                print("  warm-up done", flush=True)
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in rows}
            for rep in range(args.reps):
                for label, system, threads in rows[rep % len(rows):] + rows[: rep % len(rows)]:
                    result = launch(system, folder, python.get(system, sys.executable), threads=threads)
                    if "init_model_hash" in result and result["init_model_hash"] != spec["init_model_hash"]:
                        raise RuntimeError(f"{label}'s initial model is not the one given to the other systems")
                    runs[label].append(result)
                    stats = round_stats(result)
                    print(f"  rep {rep + 1}/{args.reps} {label:32s} {stats['round']:.4f} s/round, launch to round 1 "
                          f"{stats['launch']:.2f} s, peak RSS {stats['rss']:,.0f} MiB, acc {stats['accuracy']:.4f}, "
                          f"load {result['load']:.1f}", flush=True)
            results[name] = {label: summarize(runs[label]) for label in runs}
            raw[name] = {"spec": spec, "runs": runs}

    loads = [load for w in results.values() for s in w.values() for load in s["load"]]
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/round_time.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "flower": flower_version,
        "reps": args.reps,
        "threads": args.threads,
        "load_average": [min(loads), statistics.median(loads), max(loads)],
        "minutes": (time.time() - started) / 60,
    }
    lines = [
        f"# Round time: torchchain, a plain PyTorch loop and Flower ({meta['date']})",
        "",
        f"`{meta['command']}`: {os.cpu_count()} CPUs, Python {meta['python']}, torch {meta['torch']}, "
        f"Flower/Ray {meta['flower'] or 'not installed'}; {args.reps} repetitions, medians (round: min–max of the "
        f"runs' medians); 1-min load average at the launches {meta['load_average'][0]:.1f} / "
        f"{meta['load_average'][1]:.1f} / {meta['load_average'][2]:.1f} (min / median / max); "
        f"{meta['minutes']:.1f} min in all.",
        "",
    ]
    for name, summaries in results.items():
        lines += [*table(name, summaries), ""]
    if any("flower" in s for s in results.values()):
        lines += ["Targets (torchchain / Flower, medians):", "", *target_table(results), ""]
    for name, summaries in results.items():
        lines += phase_lines(name, summaries)
    print("\n" + "\n".join(lines))
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "round_time.md").write_text("\n".join(lines) + "\n")
    (args.results / "round_time.json").write_text(json.dumps({"meta": meta, "summary": results, "raw": raw}, indent=1) + "\n")
    print(f"\nwritten: {args.results / 'round_time.md'}, {args.results / 'round_time.json'}")


# -- per-phase shares, in process -----------------------------------------------------------------


def measure(overrides: list[str]) -> dict:
    from torchchain.experiment import run

    cfg = _compose([*overrides, "runtime.progress=false"])
    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(io.StringIO()):
        return run(cfg, run_dir)


def phase_shares(difficulties: list[int], extra: list[str]) -> None:
    measure([*extra, "rounds=2"])  # warm-up: imports, allocator, data loading caches
    header = f"{'config':42s} {'acc':>6s} {'s/round':>8s} " + " ".join(f"{p[:9]:>9s}" for p in PHASES)
    print(header)
    for bits in difficulties:
        for attack in ([], ["attack=signflip"]):
            overrides = [*extra, f"chain.difficulty={bits}", *attack]
            summary = measure(overrides)
            shares = summary["phase_share"]
            label = " ".join(overrides) or "(defaults)"
            print(
                f"{label[:42]:42s} {summary.get('final_accuracy') or 0:6.3f} {summary['median_round_seconds']:8.4f} "
                + " ".join(f"{100 * shares.get(p, 0.0):8.1f}%" for p in PHASES)
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every system (default 3)")
    parser.add_argument("--flower-python", default=sys.executable, help="interpreter with flwr[simulation] installed")
    parser.add_argument("--executors", nargs="+", help="torchchain executors (default: every one but auto)")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[0],
        help="OMP/MKL threads of the torchchain and plain workers, one set of rows per value (0: torch's default)",
    )
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the one-round warm-up runs")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for round_time.md and round_time.json")
    parser.add_argument("--difficulty", type=int, nargs="+", help="per-phase shares at these proof-of-work bits")
    parser.add_argument("--overrides", nargs="*", default=[], help="per-phase mode: extra config overrides")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workload-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        worker_main(args.worker, args.workload_dir, args.worker_out, args.rounds)
    elif args.difficulty or args.overrides:
        phase_shares(args.difficulty or [16], args.overrides)
    else:
        compare(args)


if __name__ == "__main__":
    main()
