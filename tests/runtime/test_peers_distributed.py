"""Peers as real torch.distributed (gloo) processes on loopback: the same protocol as in process,
each process with its own ledger, ending on the same head."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from spawning import free_port, run_ranks

WORLD = 3
SEED = 0
T0 = 1_800_000_000_000
CONFIG = {
    "seed": SEED,
    "clients": 4,
    "byzantine": 0,
    "strategy": {"_target_": "torchchain.strategies.Median", "f": None, "pre": []},
    "chain": {"difficulty": 8, "max_update_mb": 64},
}


def _worker(
    rank: int, port: int, run_dir: str, faulty: int | None, rounds: int = 2, resume: bool = False,
    fault_kind: str = "wrong_model",
) -> None:
    """One peer in its own process: builds the same task as every other rank, runs every round."""
    from torchchain.data import load_digits
    from torchchain.models import LinearRegression
    from torchchain.runtime.client import LocalTraining
    from torchchain.runtime.peer import run_peer
    from torchchain.runtime.peer_behaviour import PeerFault
    from torchchain.runtime.simulation import SimulationSettings
    from torchchain.runtime.transport import DistributedTransport

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    data = load_digits(test_fraction=0.2, seed=SEED)
    torch.manual_seed(SEED)  # every process builds the same initial model
    model = LinearRegression(input_shape=list(data.input_shape), num_outputs=data.num_outputs)
    settings = SimulationSettings(
        clients=4, rounds=rounds, byzantine=0, seed=SEED, device=torch.device("cpu"),
        training=LocalTraining(epochs=1, batch_size=32, lr=0.3), difficulty=8, progress=False,
    )
    transport = DistributedTransport(timeout=20, backend="gloo")
    try:
        outcome = run_peer(
            transport, data=data, model=model, settings=settings, config=CONFIG, run_dir=run_dir,
            fault=PeerFault(fault_kind) if rank == faulty else None, resume=resume,
            # A fixed clock fixes every nonce, so no honest peer ties the faulty one's zero attempts.
            genesis_time_ms=T0, clock=lambda: T0,
        )
    finally:
        transport.close()
    record = {
        "rank": rank,
        "height": outcome.height,
        "head": outcome.head,
        "model_hash": outcome.model_hash,
        "error": None if outcome.error is None else str(outcome.error),
        "ledger": str(outcome.ledger),
        "events": [[e.kind, e.rank, e.reason] for e in outcome.events],
    }
    Path(run_dir, f"peer-{rank}.json").write_text(json.dumps(record))


def _spawn(
    tmp_path: Path, *, faulty: int | None = None, limit: float = 60.0, rounds: int = 2, resume: bool = False,
    fault_kind: str = "wrong_model",
) -> dict[int, dict]:
    """Run WORLD peer processes; their records by rank. Fails, never hangs."""
    run_ranks(
        _worker, (free_port(), str(tmp_path), faulty, rounds, resume, fault_kind), nprocs=WORLD, limit=limit,
        preload="torchchain.runtime.peer", what="peer processes",
    )
    return {
        rank: json.loads((tmp_path / f"peer-{rank}.json").read_text())
        for rank in range(WORLD)
        if (tmp_path / f"peer-{rank}.json").exists()
    }


@pytest.mark.distributed
def test_gloo_peers_end_with_identical_audited_ledgers(tmp_path):
    from torchchain.protocol.audit import audit_ledger

    start = time.monotonic()
    records = _spawn(tmp_path, faulty=2)
    assert sorted(records) == [0, 1, 2]
    assert [r["error"] for r in records.values()] == [None, None, None]
    assert {r["height"] for r in records.values()} == {2}
    assert len({r["head"] for r in records.values()}) == 1
    for rank in (0, 1):
        rejected = [reason for kind, who, reason in records[rank]["events"] if kind == "rejected"]
        assert len(rejected) == 2 and all("not the aggregate" in r for r in rejected)
    files = [
        {str(p.relative_to(r["ledger"])): p.read_bytes() for p in Path(r["ledger"]).rglob("*") if p.is_file() and p.name != ".lock"}
        for r in records.values()
    ]
    assert files[0] == files[1] == files[2]
    assert audit_ledger(records[0]["ledger"]).attested == 2
    assert time.monotonic() - start < 60


@pytest.mark.distributed
def test_gloo_peers_restarted_after_one_fell_behind_resume_to_one_head(tmp_path):
    from torchchain.chain.ledger import BLOCKS_DIR
    from torchchain.protocol.audit import audit_ledger

    first = _spawn(tmp_path, rounds=2)
    assert {r["height"] for r in first.values()} == {2}
    # Rank 2 was killed after the attestations were counted, before it wrote block 2.
    next((tmp_path / "rank2" / "ledger" / BLOCKS_DIR).glob("00000002-*.json")).unlink()
    for rank in range(WORLD):
        (tmp_path / f"peer-{rank}.json").unlink()
    resumed = _spawn(tmp_path, rounds=3, resume=True)
    assert [r["error"] for r in resumed.values()] == [None] * WORLD
    assert {r["height"] for r in resumed.values()} == {3} and len({r["head"] for r in resumed.values()}) == 1
    fetched = [e for e in resumed[2]["events"] if e[0] == "fetched"]
    assert len(fetched) == 1 and "height 2 from rank 0" in fetched[0][2]
    assert audit_ledger(resumed[2]["ledger"]).attested == 3


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("fault_kind", ["bad_nonce", "drop_tx", "forge_attestation", "equivocate", "withhold"])
def test_gloo_honest_peers_outlast_each_faulty_peer(tmp_path, fault_kind):
    # Every Byzantine behaviour, over real gloo processes: the two honest peers commit the same
    # two blocks, log why they refused the faulty one's work, and their ledgers audit.
    from torchchain.protocol.audit import audit_ledger

    records = _spawn(tmp_path, faulty=2, fault_kind=fault_kind)
    honest = [records[0], records[1]]
    assert [r["error"] for r in honest] == [None, None]
    assert {r["height"] for r in honest} == {2} and honest[0]["head"] == honest[1]["head"]
    assert all(r["events"] for r in honest), "an honest peer logged nothing about the faulty one"
    files = [
        {str(p.relative_to(r["ledger"])): p.read_bytes() for p in Path(r["ledger"]).rglob("*") if p.is_file() and p.name != ".lock"}
        for r in honest
    ]
    assert files[0] == files[1]
    assert audit_ledger(honest[0]["ledger"]).attested == 2
