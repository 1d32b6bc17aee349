"""Fixtures for the chain tests: deterministic keys and a small real ledger.

Difficulty 8 keeps mining to a few hundred hashes per block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from torchchain.chain.block import Block, Transaction, make_block, make_genesis
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.ledger import Ledger

DIFFICULTY = 8
CONFIG = {"clients": 3, "rounds": 2, "seed": 0, "strategy": "fedavg"}


@pytest.fixture(scope="session")
def keys() -> list[SigningKey]:
    """Three client keys, the same in every run."""
    return [SigningKey.from_seed_material(f"tests/chain/client/{i}") for i in range(3)]


@pytest.fixture(scope="session")
def miner_key() -> SigningKey:
    return SigningKey.from_seed_material("tests/chain/miner")


@pytest.fixture
def genesis(keys: list[SigningKey], miner_key: SigningKey) -> Block:
    return make_genesis(
        members=[k.public_key for k in keys],
        config=CONFIG,
        model_hash=sha256_hex(b"model-0"),
        miner=miner_key.public_key,
        difficulty=DIFFICULTY,
        time_ms=1_700_000_000_000,
    )


RoundBuilder = Callable[..., Block]


@pytest.fixture
def round_block(keys: list[SigningKey], miner_key: SigningKey) -> RoundBuilder:
    """A function that builds (and mines) the next block of a ledger.

    ``round_block(ledger, signers=keys, put_blobs=True)``: one signed transaction per signer,
    computed against the head, for round ``head.round + 1``; its update blobs and model blob are
    stored in the ledger unless ``put_blobs`` is false. The block is not appended.
    """

    def build(ledger: Ledger, *, signers: Sequence[SigningKey] | None = None, put_blobs: bool = True) -> Block:
        prev = ledger.head
        round_ = prev.header.round + 1
        transactions = []
        for key in keys if signers is None else signers:
            update = f"update round={round_} client={key.public_key}".encode()
            if put_blobs:
                ledger.put_blob(update)
            tx = Transaction(
                client=key.public_key,
                round=round_,
                base_hash=prev.hash,
                update_hash=sha256_hex(update),
                num_samples=10 + round_,
                codec="none",
            )
            transactions.append(tx.signed(key))
        model = f"model-{round_}".encode()
        if put_blobs:
            ledger.put_blob(model)
        return make_block(
            prev=prev,
            round=round_,
            transactions=transactions,
            meta={"rejected": [], "trust": {k.public_key: 1.0 for k in keys}},
            model_hash=sha256_hex(model),
            miner=miner_key.public_key,
            difficulty=DIFFICULTY,
            time_ms=1_700_000_000_000 + round_,
        )

    return build


@pytest.fixture
def ledger(tmp_path: Path, genesis: Block, round_block: RoundBuilder) -> Ledger:
    """A 3-block ledger (genesis and rounds 1, 2, three clients each) in ``tmp_path/ledger``."""
    chain = Ledger.create(tmp_path / "ledger", genesis, blobs=[b"model-0"])
    for _ in range(2):
        chain.append(round_block(chain))
    return chain
