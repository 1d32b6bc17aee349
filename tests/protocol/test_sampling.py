"""clients_per_round: a sample every node derives from the config hash and the round; unsampled
clients cost nothing, and one seed samples the same clients run after run."""

from __future__ import annotations

import pytest
import torch

from torchchain.chain.block import Transaction
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.ledger import Ledger
from torchchain.errors import ConfigError
from torchchain.experiment import run
from torchchain.protocol.audit import audit_ledger
from torchchain.protocol.sampling import round_sample, sample_size
from torchchain.protocol.submission import RoundContext, Submission, select_submissions
from torchchain.updates.serialize import update_to_bytes

from composing import FAST, compose_config

MEMBERS = [SigningKey.from_seed_material(f"sample-test/{i}") for i in range(12)]
KEYS = sorted(k.public_key for k in MEMBERS)


def test_the_sample_is_a_function_of_the_config_hash_and_the_round() -> None:
    first = round_sample("11" * 32, 1, KEYS, 4)
    assert len(first) == 4 and first <= set(KEYS)
    assert round_sample("11" * 32, 1, reversed(KEYS), 4) == first  # member order does not matter
    assert len({round_sample(f"{i:02x}" * 32, 1, KEYS, 4) for i in range(20)}) > 10  # other chains
    assert len({round_sample("11" * 32, r, KEYS, 4) for r in range(20)}) > 10  # other rounds
    assert round_sample("11" * 32, 1, KEYS, None) == frozenset(KEYS)


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), (12, None), (1.0, None), (5, 5), (0.25, 3), (0.01, 1)]
)
def test_sample_size_takes_counts_and_fractions(value, expected) -> None:
    assert sample_size({"clients_per_round": value}, 12) == expected


@pytest.mark.parametrize("value", [0, 13, -1, 0.0, 1.5, float("nan"), True, "half"])
def test_sample_size_refuses_other_values(value) -> None:
    with pytest.raises(ConfigError, match="clients_per_round"):
        sample_size({"clients_per_round": value}, 12)


def test_an_unsampled_member_is_rejected() -> None:
    parent = "22" * 32
    sample = round_sample("33" * 32, 1, KEYS, 3)
    template = {"w": torch.zeros(3)}
    context = RoundContext(
        members=frozenset(KEYS), round=1, base_hash=parent, template=template, max_update_bytes=1 << 16, sampled=sample
    )
    payload = update_to_bytes({"w": torch.ones(3)})
    subs = []
    for key in MEMBERS:
        tx = Transaction(client=key.public_key, round=1, base_hash=parent, update_hash=sha256_hex(payload), num_samples=1)
        subs.append(Submission(tx.signed(key), payload))
    selection = select_submissions(subs, context)
    assert {tx.client for tx, _, _ in selection.accepted} == sample
    assert {code for _, code, _ in selection.rejected} == {"not_sampled"} and len(selection.rejected) == 9


def test_a_sampled_run_trains_only_the_sample_and_audits(tmp_path, monkeypatch) -> None:
    from torchchain.runtime.executor import LocalExecutor

    trained = []
    original = LocalExecutor.train

    def count(self, model, global_state, datas, *args, **kwargs):
        trained.extend(datas)
        return original(self, model, global_state, datas, *args, **kwargs)

    monkeypatch.setattr(LocalExecutor, "train", count)
    summary = run(compose_config([*FAST, "clients=12", "clients_per_round=3", "rounds=4", "attack=signflip"]), tmp_path)
    assert len(trained) == 3 * 4  # unsampled clients cost nothing
    ledger = Ledger.open(tmp_path / "ledger")
    members = ledger.members
    for block in ledger.iter_blocks(1):
        sample = round_sample(block.header.config_hash, block.header.round, members, 3)
        assert {tx.client for tx in block.transactions} <= sample
    assert summary["rejected"] == 0
    assert len(audit_ledger(tmp_path / "ledger").rounds) == 4


def test_a_rule_that_cannot_run_on_the_sample_is_refused_before_training(tmp_path) -> None:
    with pytest.raises(ConfigError, match="clients_per_round=4"):
        run(compose_config([*FAST, "clients=10", "clients_per_round=4", "strategy=krum", "byzantine=2"]), tmp_path)
    assert not (tmp_path / "ledger").exists()


def test_one_seed_samples_the_same_clients_and_trains_the_same_models_whatever_the_clock(tmp_path, monkeypatch) -> None:
    # Block hashes hold the mining time; the sample and the bucketing permutation must not
    # depend on them, or two runs of one seed would aggregate differently.
    import time as time_module

    overrides = [*FAST, "clients=12", "clients_per_round=6", "rounds=4", "strategy=median", "strategy.pre=[bucketing]"]
    hashes = []
    for offset in (0.0, 12_345.678):
        clock = time_module.time
        monkeypatch.setattr(time_module, "time", lambda: clock() + offset)
        run(compose_config(overrides), tmp_path / str(offset))
        monkeypatch.undo()
        ledger = Ledger.open(tmp_path / str(offset) / "ledger")
        blocks = list(ledger.iter_blocks(1))
        hashes.append(
            (
                [b.header.model_hash for b in blocks],
                [b.meta["randomness"] for b in blocks],
                [sorted(tx.client for tx in b.transactions) for b in blocks],
                [b.hash for b in blocks],
            )
        )
    (models, randomness, clients, block_hashes), (models2, randomness2, clients2, block_hashes2) = hashes
    assert models == models2 and randomness == randomness2 and clients == clients2
    assert block_hashes != block_hashes2  # the times differ, and so do the hashes that cover them
