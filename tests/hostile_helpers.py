"""Shared pieces for ``test_hostile_ledger.py``: tiny ledgers built with the library's own functions.

Everything here forges or mines with the public API (``make_genesis``, ``make_block``, ``Node``,
``RoundRules``, ...), so a test can play the enemy who writes a ledger by hand and then check
that the readers (``verify``, ``audit``, ``inspect``) refuse it.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from torchchain.chain.block import Block, Transaction, make_block, make_genesis
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.ledger import BLOCKS_DIR, Ledger, block_file_name
from torchchain.protocol.record import Rejections, RoundRecord
from torchchain.protocol.round import RoundRules
from torchchain.protocol.submission import Submission
from torchchain.runtime.node import Node
from torchchain.updates.serialize import update_to_bytes

#: Five member keys; tests take the first ``n``.
KEYS = [SigningKey.from_seed_material(f"hostile-ledger-test/client/{i}") for i in range(5)]
#: The one key the genesis blocks built here authorize to mine.
MINER = SigningKey.from_seed_material("hostile-ledger-test/miner")
#: Someone who is not a listed miner.
OUTSIDER = SigningKey.from_seed_material("hostile-ledger-test/outsider")
DIFFICULTY = 4
T0 = 1_700_000_000_000

MEDIAN = {"_target_": "torchchain.strategies.Median", "f": None, "pre": []}
FEDAVG = {"_target_": "torchchain.strategies.FedAvg", "f": None, "pre": []}


def model() -> dict[str, torch.Tensor]:
    """A two-tensor model, small enough that a round costs nothing."""
    return {"fc.weight": torch.linspace(-1.0, 1.0, 6).reshape(2, 3), "fc.bias": torch.zeros(2)}


def update(client: int, rnd: int, scale: float = 0.01) -> dict[str, torch.Tensor]:
    """A small honest-looking update, different per client and round."""
    g = torch.Generator().manual_seed(1000 * rnd + client)
    return {"fc.weight": scale * torch.randn(2, 3, generator=g), "fc.bias": scale * torch.randn(2, generator=g)}


def config(strategy: Mapping[str, Any], *, clients: int = 4, byzantine: int = 0, max_update_mb: float = 1) -> dict:
    """A protocol config as a genesis block records it."""
    return {
        "seed": 0,
        "clients": clients,
        "byzantine": byzantine,
        "strategy": dict(strategy),
        "chain": {"difficulty": DIFFICULTY, "max_update_mb": max_update_mb},
    }


def genesis_block(strategy: Mapping[str, Any], *, clients: int = 4, byzantine: int = 0, state=None) -> Block:
    state = model() if state is None else state
    return make_genesis(
        members=[k.public_key for k in KEYS[:clients]],
        config=config(strategy, clients=clients, byzantine=byzantine),
        model_hash=sha256_hex(update_to_bytes(state)),
        miner=MINER,
        difficulty=DIFFICULTY,
        time_ms=T0,
    )


def genesis_ledger(
    path: Path, strategy: Mapping[str, Any] = MEDIAN, *, clients: int = 4, byzantine: int = 0, state=None
) -> tuple[Ledger, dict[str, torch.Tensor]]:
    """A writer on a fresh ledger whose genesis (mined and signed by :data:`MINER`) names ``strategy``;
    the model blob is stored."""
    state = model() if state is None else state
    genesis = genesis_block(strategy, clients=clients, byzantine=byzantine, state=state)
    return Ledger.create(path, genesis, blobs=[update_to_bytes(state)]), state


def signed(key: SigningKey, payload: bytes, *, rnd: int, base_hash: str, num_samples: int = 10) -> Transaction:
    tx = Transaction(
        client=key.public_key, round=rnd, base_hash=base_hash, update_hash=sha256_hex(payload), num_samples=num_samples
    )
    return tx.signed(key)


def submission(
    key: SigningKey, tensors: Mapping[str, torch.Tensor], *, rnd: int, base_hash: str, num_samples: int = 10
) -> Submission:
    payload = update_to_bytes(dict(tensors))
    return Submission(signed(key, payload, rnd=rnd, base_hash=base_hash, num_samples=num_samples), payload)


def node(ledger: Ledger, *, trusted: Sequence[str] = ()) -> Node:
    rules = RoundRules.from_genesis(ledger.genesis, trusted=trusted)
    return Node(ledger=ledger, rules=rules, key=MINER, difficulty=ledger.genesis.header.difficulty)


def mine_honest_rounds(ledger: Ledger, state, rounds: int, *, clients: int = 4, junk: int = 0, trusted=()):
    """Mine ``rounds`` rounds of honest updates (plus ``junk`` refused submissions per round) with a real Node.

    Returns the model after the last round.
    """
    n = node(ledger, trusted=trusted)
    for rnd in range(ledger.height + 1, ledger.height + 1 + rounds):
        base = ledger.head_hash
        subs = [submission(KEYS[i], update(i, rnd), rnd=rnd, base_hash=base) for i in range(clients)]
        subs += [junk_submission(j, rnd=rnd, base_hash=base) for j in range(junk)]
        prepared = n.mine_round(rnd, subs, state, time_ms=T0 + rnd)
        state = prepared.model
    return state


def junk_submission(j: int, *, rnd: int, base_hash: str) -> Submission:
    """An unsigned transaction from a key no genesis lists (refused as ``unknown_client``)."""
    client = sha256_hex(f"hostile-ledger-test/junk/{j}".encode())
    tx = Transaction(client=client, round=rnd, base_hash=base_hash, update_hash=sha256_hex(b"%d" % j), num_samples=1)
    return Submission(tx, b"junk")


def round_meta(transactions: Sequence[Transaction], prev: Block, **overrides) -> dict[str, Any]:
    """A well-formed round record (uniform trust, nothing rejected) for a forged block on ``prev``."""
    from torchchain.protocol.randomness import round_randomness

    record = RoundRecord(
        outcome="aggregated",
        trust={tx.client: 1.0 / len(transactions) for tx in transactions} if transactions else {},
        rejected=Rejections(),
        randomness=round_randomness(
            prev.header.config_hash, prev.header.round + 1, [(tx.client, tx.update_hash) for tx in transactions]
        ),
    )
    meta = record.to_meta()
    meta.update(overrides)
    return meta


def forged_block(
    prev: Block, *, miner: SigningKey = MINER, round: int | None = None, time_ms: int | None = None,
    difficulty: int = DIFFICULTY, model_hash: str | None = None, transactions: Sequence[Transaction] = (),
    meta: Mapping[str, Any] | None = None,
) -> Block:
    """A block after ``prev`` mined and signed by ``miner`` with whatever fields the caller forges."""
    return make_block(
        prev=prev,
        round=prev.header.round + 1 if round is None else round,
        transactions=list(transactions),
        meta=round_meta(transactions, prev) if meta is None else meta,
        model_hash=prev.header.model_hash if model_hash is None else model_hash,
        miner=miner,
        difficulty=difficulty,
        time_ms=prev.header.time_ms + 1 if time_ms is None else time_ms,
    )


def plant_block(ledger_path: Path, block: Block) -> Path:
    """Write a block file straight into the folder, as an enemy with disk access would."""
    path = Path(ledger_path) / BLOCKS_DIR / block_file_name(block)
    path.write_bytes(block.to_bytes())
    return path


def copy_run(src: Path, dst: Path) -> Path:
    """A private copy of a run folder (ledger, summary, checkpoints, config) to damage."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def run_keys(seed: int, clients: int) -> tuple[SigningKey, list[SigningKey]]:
    """The node key and client keys a simulation with ``seed`` derives (as the runtime does)."""
    node_key = SigningKey.from_seed_material(f"torchchain/node/0/seed={seed}")
    return node_key, [SigningKey.from_seed_material(f"torchchain/client/{i}/seed={seed}") for i in range(clients)]
