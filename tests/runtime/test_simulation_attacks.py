"""Attacks that the runtime carries out: on the chain (replay, Sybil) and on the evaluation (backdoor)."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from torchchain.chain.ledger import Ledger
from torchchain.chain.verify import verify_ledger
from torchchain.experiment import run

from composing import FAST, compose_config

BASE = [*FAST, "clients=6", "byzantine=2", "rounds=3"]


@pytest.mark.parametrize(
    ("target", "code", "per_round"),
    [("torchchain.attacks.Replay", "wrong_round", 2), ("torchchain.attacks.Sybil", "unknown_client", 6)],
)
def test_chain_attacks_end_as_rejected_transactions(tmp_path, target, code, per_round):
    summary = run(compose_config([*BASE, "attack=none", f"attack._target_={target}"]), tmp_path)
    ledger = Ledger.open(summary["ledger"])
    rounds = ledger.blocks()[1:]
    # Replay has nothing to resend in round 1; Sybil floods every round (3 fake keys x 2 clients).
    expected = per_round * (len(rounds) - 1) if code == "wrong_round" else per_round * len(rounds)
    assert summary["rejected"] == expected
    for block in rounds:
        assert {r["code"] for r in block.meta["rejected"]} <= {code}
        # Only the 4 honest clients' updates are in the model; the malicious keys send nothing else.
        assert len(block.transactions) == 4
    accepted = {tx.client for b in rounds for tx in b.transactions}
    assert len(accepted) == 4 and accepted < set(ledger.members)
    verify_ledger(summary["ledger"])


def test_replay_resends_a_genuinely_signed_transaction(tmp_path):
    summary = run(compose_config([*BASE, "attack=none", "attack._target_=torchchain.attacks.Replay"]), tmp_path)
    ledger = Ledger.open(summary["ledger"])
    earlier = {tx.update_hash for tx in ledger.block(1).transactions}
    replayed = {r["update_hash"] for r in ledger.block(2).meta["rejected"]}
    assert replayed and replayed <= earlier


def test_fltrust_records_its_reference_update(tmp_path):
    summary = run(compose_config([*BASE, "strategy._target_=torchchain.strategies.FLTrust"]), tmp_path)
    ledger = Ledger.open(summary["ledger"])
    for block in ledger.blocks()[1:]:
        assert ledger.has_blob(block.meta["reference"])
    assert summary["final_accuracy"] > 0.5


def test_backdoor_logs_its_success_rate(tmp_path):
    summary = run(compose_config([*BASE, "attack=none", "attack._target_=torchchain.attacks.Backdoor"]), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    values = [e.value for e in events.Scalars("eval/backdoor_accuracy")]
    assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)
    assert summary["final_accuracy"] > 0.5
