"""The mining node rejects every kind of bad update with its own reason and keeps the rest."""

import dataclasses

import pytest
import torch

from torchchain.chain.block import Transaction, make_genesis
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.ledger import Ledger
from torchchain.chain.verify import verify_ledger
from torchchain.protocol.round import RoundRules
from torchchain.runtime.node import Node, Submission
from torchchain.strategies import CenteredClipping, Median
from torchchain.updates.serialize import update_to_bytes

DIFFICULTY = 4


def _state():
    return {"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)}


def _update(value: float):
    return {"fc.weight": torch.full((2, 3), value), "fc.bias": torch.full((2,), value)}


def _rules(keys):
    strategy = Median()
    strategy.setup(num_clients=4, num_byzantine=1)
    return RoundRules(strategy=strategy, members=frozenset(k.public_key for k in keys), max_update_bytes=1 << 20)


@pytest.fixture
def setup(tmp_path):
    keys = [SigningKey.from_seed_material(f"test/client/{i}") for i in range(4)]
    miner = SigningKey.from_seed_material("test/miner")
    state = _state()
    model = update_to_bytes(state)
    genesis = make_genesis(
        members=[k.public_key for k in keys],
        config={"test": True},
        model_hash=sha256_hex(model),
        miner=miner,
        difficulty=DIFFICULTY,
        time_ms=0,
    )
    ledger = Ledger.create(tmp_path / "ledger", genesis, blobs=[model])
    node = Node(ledger=ledger, rules=_rules(keys), key=miner, difficulty=DIFFICULTY)
    return node, ledger, keys, state


def _submit(key, update, *, round, base_hash, num_samples=10):
    payload = update_to_bytes(update)
    tx = Transaction(client=key.public_key, round=round, base_hash=base_hash, update_hash=sha256_hex(payload), num_samples=num_samples)
    return Submission(transaction=tx.signed(key), payload=payload)


def _codes(outcome):
    return {r["client"]: r["code"] for r in outcome.rejected}


def test_valid_round_is_mined_and_verifies(setup):
    node, ledger, keys, state = setup
    subs = [_submit(k, _update(0.1 * (i + 1)), round=1, base_hash=ledger.head.hash) for i, k in enumerate(keys)]
    outcome = node.mine_round(1, subs, state)
    assert outcome.rejected == []
    assert ledger.height == 1
    # The median of 0.1, 0.2, 0.3, 0.4 is 0.25 on every coordinate.
    assert torch.allclose(outcome.model["fc.weight"], torch.full((2, 3), 0.25))
    assert outcome.block.header.model_hash == sha256_hex(update_to_bytes(outcome.model))
    assert verify_ledger(ledger.path).height == 1


def test_aggregate_does_not_depend_on_arrival_order(setup, tmp_path):
    node, ledger, keys, state = setup
    subs = [_submit(k, _update(0.1 * (i + 1) + 0.01 * i * i), round=1, base_hash=ledger.head.hash) for i, k in enumerate(keys)]
    forward = node.mine_round(1, subs, state, time_ms=5)
    # A second node with the same genesis receives the same updates in reverse order.
    other = Ledger.create(tmp_path / "other", ledger.genesis, blobs=[update_to_bytes(state)])
    other_node = Node(ledger=other, rules=_rules(keys), key=node.key, difficulty=DIFFICULTY)
    backward = other_node.mine_round(1, list(reversed(subs)), state, time_ms=5)
    assert backward.block.header.model_hash == forward.block.header.model_hash
    assert backward.block.hash == forward.block.hash


def test_forged_signature_is_rejected(setup):
    node, ledger, keys, state = setup
    good = [_submit(k, _update(0.1), round=1, base_hash=ledger.head.hash) for k in keys[:3]]
    forged = _submit(keys[3], _update(5.0), round=1, base_hash=ledger.head.hash)
    # Claim more samples after signing: the signature no longer matches the transaction.
    forged = Submission(dataclasses.replace(forged.transaction, num_samples=10_000), forged.payload)
    outcome = node.mine_round(1, good + [forged], state)
    assert _codes(outcome) == {keys[3].public_key: "bad_signature"}
    assert len(outcome.accepted) == 3
    assert outcome.block.meta["rejected"]["sample"][0]["code"] == "bad_signature"


def test_signature_by_another_member_is_rejected(setup):
    node, ledger, keys, state = setup
    payload = update_to_bytes(_update(0.1))
    tx = Transaction(client=keys[0].public_key, round=1, base_hash=ledger.head.hash, update_hash=sha256_hex(payload), num_samples=1)
    stolen = dataclasses.replace(tx, signature=keys[1].sign(tx.signing_payload()))
    outcome = node.mine_round(1, [Submission(stolen, payload)], state)
    assert _codes(outcome) == {keys[0].public_key: "bad_signature"}


def test_replayed_transaction_from_an_earlier_round_is_rejected(setup):
    node, ledger, keys, state = setup
    first = [_submit(k, _update(0.1), round=1, base_hash=ledger.head.hash) for k in keys]
    outcome1 = node.mine_round(1, first, state)
    assert outcome1.rejected == []
    fresh = [_submit(k, _update(0.2), round=2, base_hash=ledger.head.hash) for k in keys[1:]]
    outcome2 = node.mine_round(2, fresh + [first[0]], outcome1.model)
    assert _codes(outcome2) == {keys[0].public_key: "wrong_round"}
    assert "replayed" in outcome2.rejected[0]["reason"]


def test_update_against_a_stale_base_is_rejected(setup):
    node, ledger, keys, state = setup
    subs = [_submit(k, _update(0.1), round=1, base_hash=ledger.head.hash) for k in keys[:3]]
    subs.append(_submit(keys[3], _update(0.1), round=1, base_hash="ab" * 32))
    outcome = node.mine_round(1, subs, state)
    assert _codes(outcome) == {keys[3].public_key: "stale_base"}


def test_nan_update_is_rejected(setup):
    node, ledger, keys, state = setup
    bad = _update(0.1)
    bad["fc.bias"][1] = float("nan")
    subs = [_submit(k, _update(0.1), round=1, base_hash=ledger.head.hash) for k in keys[:3]]
    subs.append(_submit(keys[3], bad, round=1, base_hash=ledger.head.hash))
    outcome = node.mine_round(1, subs, state)
    assert _codes(outcome) == {keys[3].public_key: "non_finite"}
    assert "fc.bias" in outcome.rejected[0]["reason"]
    assert torch.isfinite(outcome.model["fc.bias"]).all()


def test_wrong_shape_is_rejected(setup):
    node, ledger, keys, state = setup
    bad = {"fc.weight": torch.zeros(3, 2), "fc.bias": torch.zeros(2)}
    subs = [_submit(k, _update(0.1), round=1, base_hash=ledger.head.hash) for k in keys[:3]]
    subs.append(_submit(keys[3], bad, round=1, base_hash=ledger.head.hash))
    outcome = node.mine_round(1, subs, state)
    assert _codes(outcome) == {keys[3].public_key: "shape_mismatch"}


def test_wrong_dtype_and_names_are_rejected(setup):
    node, ledger, keys, state = setup
    wrong_dtype = {"fc.weight": torch.zeros(2, 3, dtype=torch.float64), "fc.bias": torch.zeros(2)}
    extra = {**_update(0.1), "evil": torch.zeros(1)}
    subs = [
        _submit(keys[0], wrong_dtype, round=1, base_hash=ledger.head.hash),
        _submit(keys[1], extra, round=1, base_hash=ledger.head.hash),
        _submit(keys[2], _update(0.1), round=1, base_hash=ledger.head.hash),
    ]
    outcome = node.mine_round(1, subs, state)
    assert _codes(outcome) == {keys[0].public_key: "dtype_mismatch", keys[1].public_key: "tensor_names"}


def test_unknown_key_is_rejected(setup):
    node, ledger, keys, state = setup
    outsider = SigningKey.from_seed_material("test/outsider")
    subs = [_submit(k, _update(0.1), round=1, base_hash=ledger.head.hash) for k in keys]
    subs.append(_submit(outsider, _update(9.0), round=1, base_hash=ledger.head.hash))
    outcome = node.mine_round(1, subs, state)
    assert _codes(outcome) == {outsider.public_key: "unknown_client"}
    assert len(outcome.accepted) == 4


def test_payload_swapped_after_signing_is_rejected(setup):
    node, ledger, keys, state = setup
    sub = _submit(keys[0], _update(0.1), round=1, base_hash=ledger.head.hash)
    swapped = Submission(sub.transaction, update_to_bytes(_update(7.0)))
    outcome = node.mine_round(1, [swapped], state)
    assert _codes(outcome) == {keys[0].public_key: "hash_mismatch"}


def test_oversized_and_duplicate_submissions_are_rejected(setup):
    node, ledger, keys, state = setup
    node.rules = dataclasses.replace(node.rules, max_update_bytes=100)
    outcome = node.mine_round(1, [_submit(keys[0], _update(0.1), round=1, base_hash=ledger.head.hash)], state)
    assert _codes(outcome) == {keys[0].public_key: "oversized"}
    node.rules = dataclasses.replace(node.rules, max_update_bytes=1 << 20)
    sub = _submit(keys[1], _update(0.1), round=2, base_hash=ledger.head.hash)
    outcome = node.mine_round(2, [sub, sub], outcome.model)
    assert [r["code"] for r in outcome.rejected] == ["duplicate"]
    assert len(outcome.accepted) == 1


def test_round_with_every_update_rejected_keeps_the_model(setup):
    node, ledger, keys, state = setup
    outsider = SigningKey.from_seed_material("test/outsider")
    outcome = node.mine_round(1, [_submit(outsider, _update(1.0), round=1, base_hash=ledger.head.hash)], state)
    assert outcome.accepted == []
    assert update_to_bytes(outcome.model) == update_to_bytes(state)
    assert verify_ledger(ledger.path).height == 1


def test_round_state_advances_only_when_the_block_is_committed(tmp_path):
    keys = [SigningKey.from_seed_material(f"test/client/{i}") for i in range(4)]
    miner = SigningKey.from_seed_material("test/miner")
    state = _state()
    model = update_to_bytes(state)
    genesis = make_genesis(
        members=[k.public_key for k in keys], config={"test": True}, model_hash=sha256_hex(model),
        miner=miner, difficulty=DIFFICULTY, time_ms=0,
    )
    ledger = Ledger.create(tmp_path / "ledger", genesis, blobs=[model])
    strategy = CenteredClipping(tau=0.05)
    strategy.setup(num_clients=4, num_byzantine=1)
    rules = RoundRules(strategy=strategy, members=frozenset(k.public_key for k in keys), max_update_bytes=1 << 20)
    node = Node(ledger=ledger, rules=rules, key=miner, difficulty=DIFFICULTY)
    subs = [_submit(k, _update(0.1 * (i + 1)), round=1, base_hash=ledger.head.hash) for i, k in enumerate(keys)]
    first = node.prepare(1, subs, state, time_ms=1)
    # A block prepared but never committed (a failed write, a lost race) moves nothing:
    assert node.round_state == {} and ledger.height == 0
    again = node.prepare(1, subs, state, time_ms=1)
    assert again.block.hash == first.block.hash
    node.commit(again)
    assert torch.equal(node.round_state["center"], again.result.state["center"])
    assert again.block.meta["state"] == sha256_hex(again.result.state_bytes)
    assert ledger.has_blob(again.block.meta["state"])
