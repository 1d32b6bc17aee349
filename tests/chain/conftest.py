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
        miner=miner_key,
        difficulty=DIFFICULTY,
        time_ms=1_700_000_000_000,
    )


RoundBuilder = Callable[..., Block]


def _build_block(
    ledger: Ledger,
    parent: Block,
    *,
    signers: Sequence[SigningKey],
    members: Sequence[SigningKey],
    miner_key: SigningKey,
    put_blobs: bool = True,
    tag: str = "",
) -> Block:
    """Builds (and mines) a block extending ``parent``: one signed transaction per signer,
    computed against ``parent``, for round ``parent.round + 1``; ``tag`` changes the update,
    model and meta so that siblings differ."""
    round_ = parent.header.round + 1
    transactions = []
    for key in signers:
        update = f"update round={round_} client={key.public_key}{tag}".encode()
        if put_blobs:
            ledger.put_blob(update)
        tx = Transaction(
            client=key.public_key,
            round=round_,
            base_hash=parent.hash,
            update_hash=sha256_hex(update),
            num_samples=10 + round_,
            codec="none",
        )
        transactions.append(tx.signed(key))
    model = f"model-{round_}{tag}".encode()
    if put_blobs:
        ledger.put_blob(model)
    meta: dict[str, object] = {"rejected": [], "trust": {k.public_key: 1.0 for k in members}}
    if tag:
        meta["tag"] = tag
    return make_block(
        prev=parent,
        round=round_,
        transactions=transactions,
        meta=meta,
        model_hash=sha256_hex(model),
        miner=miner_key,
        difficulty=DIFFICULTY,
        time_ms=1_700_000_000_000 + round_,
    )


@pytest.fixture
def round_block(keys: list[SigningKey], miner_key: SigningKey) -> RoundBuilder:
    """A function that builds (and mines) the next block of a ledger.

    ``round_block(ledger, signers=keys, put_blobs=True)``: one signed transaction per signer,
    computed against the head, for round ``head.round + 1``; its update blobs and model blob are
    stored in the ledger unless ``put_blobs`` is false. The block is not appended.
    """

    def build(ledger: Ledger, *, signers: Sequence[SigningKey] | None = None, put_blobs: bool = True) -> Block:
        return _build_block(
            ledger, ledger.head, signers=keys if signers is None else signers, members=keys,
            miner_key=miner_key, put_blobs=put_blobs,
        )

    return build


ChildBuilder = Callable[..., Block]


@pytest.fixture(scope="session")
def child_block(keys: list[SigningKey], miner_key: SigningKey) -> ChildBuilder:
    """A function that builds (and mines) a block extending any stored block, for forks.

    ``child_block(ledger, parent, tag, signers=())``: like ``round_block`` but on ``parent``,
    with ``tag`` mixed into the update, model and meta so that two children of one parent
    differ; blobs are stored. The block is not appended.
    """

    def build(ledger: Ledger, parent: Block, tag: str, *, signers: Sequence[SigningKey] = ()) -> Block:
        return _build_block(ledger, parent, signers=signers, members=keys, miner_key=miner_key, tag=f"/{tag}")

    return build


@pytest.fixture
def ledger(tmp_path: Path, genesis: Block, round_block: RoundBuilder) -> Ledger:
    """A 3-block ledger (genesis and rounds 1, 2, three clients each) in ``tmp_path/ledger``."""
    chain = Ledger.create(tmp_path / "ledger", genesis, blobs=[b"model-0"])
    for _ in range(2):
        chain.append(round_block(chain))
    return chain


HOSTILE_CONFIG = {"clients": 3, "strategy": {"name": "krum", "f": 1}, "lr": 0.3, "tags": ["a", "b"], "note": None}


@pytest.fixture(scope="module")
def folder(
    tmp_path_factory: pytest.TempPathFactory,
    keys: list[SigningKey],
    miner_key: SigningKey,
    child_block: ChildBuilder,
) -> Path:
    """A ledger folder with a fork, shared by a test module that mutates it and restores it:
    genesis (config :data:`HOSTILE_CONFIG`), ``b1`` (3 transactions), and at height 2 two
    children of ``b1`` with 2 transactions each."""
    path = tmp_path_factory.mktemp("hostile") / "ledger"
    genesis = make_genesis(
        members=[k.public_key for k in keys], config=HOSTILE_CONFIG, model_hash=sha256_hex(b"model-0"),
        miner=miner_key, difficulty=DIFFICULTY, time_ms=1_700_000_000_000,
    )
    ledger = Ledger.create(path, genesis, blobs=[b"model-0"])
    b1 = child_block(ledger, genesis, "b1", signers=keys)
    ledger.append(b1)
    ledger.append(child_block(ledger, b1, "b2", signers=keys[:2]))
    ledger.append(child_block(ledger, b1, "s2", signers=keys[1:]))
    assert ledger.forks == 1
    return path
