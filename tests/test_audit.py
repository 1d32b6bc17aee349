"""Auditing replays every round from the ledger alone and catches a node that aggregated otherwise."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from torchchain.chain.block import Block, Transaction, make_block, make_genesis
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.ledger import Ledger, block_file_name
from torchchain.errors import ConfigError, LedgerError
from torchchain.experiment import run
from torchchain.protocol.audit import audit_ledger
from torchchain.protocol.randomness import round_generator, round_randomness
from torchchain.protocol.record import Rejections, RoundRecord
from torchchain.protocol.registry import build_strategy
from torchchain.protocol.round import ReplayMismatch, RoundInputs, RoundRules, execute_round
from torchchain.runtime.node import Node, Submission
from torchchain.strategies import STRATEGIES, CenteredClipping, FedAvg, Krum, Median
from torchchain.updates.serialize import update_to_bytes

from composing import FAST, compose_config

KEYS = [SigningKey.from_seed_material(f"audit-test/client/{i}") for i in range(4)]
MEMBERS = frozenset(k.public_key for k in KEYS)
MINER = SigningKey.from_seed_material("audit-test/miner")
SEED = 7
DIFFICULTY = 4
MEDIAN = {"_target_": "torchchain.strategies.Median", "f": None, "pre": []}
FEDAVG = {"_target_": "torchchain.strategies.FedAvg", "f": None, "pre": []}
CENTERED_CLIPPING = {
    "_target_": "torchchain.strategies.CenteredClipping", "tau": 0.5, "iterations": 1, "f": None, "pre": []
}
FLTRUST = {"_target_": "torchchain.strategies.FLTrust", "root_samples": 100, "f": None, "pre": []}


def _config(strategy_node, *, seed: bool = True, **extra) -> dict:
    config = {"clients": 4, "byzantine": 1, "chain": {"max_update_mb": 1}, "strategy": strategy_node, **extra}
    if seed:
        config["seed"] = SEED
    return config


# -- ledgers written directly by a Node, so a test controls what the node really did -----------


def _model() -> dict[str, torch.Tensor]:
    return {"fc.weight": torch.linspace(-1.0, 1.0, 6).reshape(2, 3), "fc.bias": torch.zeros(2)}


def _update(client: int, rnd: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * rnd + client)
    return {"fc.weight": torch.randn(2, 3, generator=g), "fc.bias": torch.randn(2, generator=g)}


def _genesis_ledger(path, strategy_node, *, seed: bool = True) -> tuple[Ledger, dict[str, torch.Tensor]]:
    state = _model()
    model = update_to_bytes(state)
    genesis = make_genesis(
        members=[k.public_key for k in KEYS],
        config=_config(strategy_node, seed=seed),
        model_hash=sha256_hex(model),
        miner=MINER,
        difficulty=DIFFICULTY,
        time_ms=1_700_000_000_000,
    )
    return Ledger.create(path, genesis, blobs=[model]), state


def _signed(key: SigningKey, payload: bytes, *, rnd: int, base_hash: str, num_samples: int = 10) -> Transaction:
    tx = Transaction(
        client=key.public_key, round=rnd, base_hash=base_hash, update_hash=sha256_hex(payload), num_samples=num_samples
    )
    return tx.signed(key)


def _rules(strategy) -> RoundRules:
    """Rules with ``strategy`` (set up for 4 clients, 1 Byzantine), whatever the genesis records."""
    strategy.setup(num_clients=4, num_byzantine=1)
    return RoundRules(strategy=strategy, members=MEMBERS, max_update_bytes=1 << 20)


def _node(ledger: Ledger, strategy) -> Node:
    rules = dataclasses.replace(_rules(strategy), config_hash=ledger.genesis.header.config_hash)
    return Node(ledger=ledger, rules=rules, key=MINER, difficulty=DIFFICULTY)


def _submissions(ledger: Ledger, rnd: int, *, forge_last: bool = False) -> list[Submission]:
    payloads = [update_to_bytes(_update(i, rnd)) for i in range(len(KEYS))]
    subs = [Submission(_signed(k, p, rnd=rnd, base_hash=ledger.head.hash), p) for k, p in zip(KEYS, payloads)]
    if forge_last:
        subs[-1] = Submission(dataclasses.replace(subs[-1].transaction, num_samples=999), subs[-1].payload)
    return subs


def _mine(node: Node, state, rnd: int, *, forge_last: bool = False, reference=None) -> dict[str, torch.Tensor]:
    """One round mined by ``node``; the last client's claim is forged (so rejected) if asked."""
    subs = _submissions(node.ledger, rnd, forge_last=forge_last)
    prepared = node.mine_round(rnd, subs, state, reference=reference, time_ms=1_700_000_000_000 + rnd)
    return prepared.model


def _append_raw(ledger: Ledger, updates: list, *, meta, model_bytes: bytes, blobs: list[bytes] = ()) -> str:
    """Append a round-1 block holding exactly these updates (tensors or raw bytes), bypassing the node."""
    payloads = [u if isinstance(u, bytes) else update_to_bytes(u) for u in updates]
    txs = sorted((_signed(k, p, rnd=1, base_hash=ledger.head.hash) for k, p in zip(KEYS, payloads)), key=lambda t: t.client)
    if callable(meta):
        meta = meta(ledger.head, txs)
    for payload in [*payloads, model_bytes, *blobs]:
        ledger.put_blob(payload)
    block = make_block(
        prev=ledger.head,
        round=1,
        transactions=txs,
        meta=meta,
        model_hash=sha256_hex(model_bytes),
        miner=MINER,
        difficulty=DIFFICULTY,
        time_ms=1_700_000_000_001,
    )
    ledger.append(block, blobs=[sha256_hex(b) for b in blobs])
    return block_file_name(block)


def _record_meta(*, trust=None, outcome: str = "aggregated", **fields):
    """A well-formed round record for the block ``_append_raw`` builds (its randomness is the true one)."""

    def meta(parent: Block, txs: list[Transaction]) -> dict:
        randomness = round_randomness(
            parent.header.config_hash, parent.header.round + 1, [(tx.client, tx.update_hash) for tx in txs]
        )
        weights = {tx.client: 0.0 for tx in txs} if trust is None else trust
        return RoundRecord(
            outcome=outcome, trust=weights, rejected=Rejections(), randomness=randomness, **fields
        ).to_meta()

    return meta


# -- real training runs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param([], id="median"),
        pytest.param(["strategy=fedavg"], id="fedavg"),
        pytest.param(["strategy=lnearest"], id="lnearest"),
        pytest.param(
            ["clients=10", "byzantine=1", "strategy._target_=torchchain.strategies.Krum", "strategy.pre=[bucketing]",
             "attack=signflip"],
            id="krum-bucketing-signflip",
        ),
        pytest.param(
            ["strategy._target_=torchchain.strategies.CenteredClipping", "attack=signflip"], id="centered_clipping-signflip"
        ),
        pytest.param(["strategy._target_=torchchain.strategies.FLTrust", "attack=signflip"], id="fltrust-signflip"),
    ],
)
def test_audit_replays_a_real_run(tmp_path, overrides):
    summary = run(compose_config(["rounds=3", "local_steps=2", *FAST, *overrides]), tmp_path)
    seen = []
    report = audit_ledger(summary["ledger"], on_round=seen.append, expect_head=summary["head"])
    assert [r.round for r in report.rounds] == [1, 2, 3]
    assert list(report.rounds) == seen
    assert all(r.matches for r in report.rounds)
    assert report.rounds[-1].replayed_model_hash == summary["model_hash"]
    assert report.verify.head == summary["head"]
    if "attack=signflip" in overrides and "strategy.pre=[bucketing]" in overrides:
        # Krum keeps one bucket: most clients get no weight, and the replay says so.
        assert all(0 < r.trusted < r.accepted for r in report.rounds)


# -- aggregation is bit-identical ---------------------------------------------------------------

ORDER_KEYS = [SigningKey.from_seed_material(f"order-test/{i}") for i in range(9)]


def _order_rules(name: str) -> RoundRules:
    node = {"_target_": "torchchain.strategies.Krum", "pre": ["bucketing"]} if name == "krum+bucketing" else {
        "_target_": f"torchchain.strategies.{STRATEGIES[name].__name__}"
    }
    config = {"clients": 9, "byzantine": 1, "chain": {"max_update_mb": 64}, "strategy": node}
    return RoundRules.from_config(config, [k.public_key for k in ORDER_KEYS])


def _order_updates(shape: tuple[int, ...], base_hash: str):
    updates = []
    for i, key in enumerate(ORDER_KEYS):
        g = torch.Generator().manual_seed(i)
        tensors = {"w": torch.randn(shape, generator=g) * (1 + i), "b": torch.randn(3, generator=g)}
        payload = update_to_bytes(tensors)
        updates.append((_signed(key, payload, rnd=1, base_hash=base_hash, num_samples=10 + i), payload, tensors))
    return updates


def _order_inputs(shape: tuple[int, ...], base_hash: str = "ab" * 32) -> RoundInputs:
    updates = sorted(_order_updates(shape, base_hash), key=lambda u: u[0].client)
    return RoundInputs(round=1, transactions=tuple(t for t, _, _ in updates), updates=tuple(u for _, _, u in updates))


ORDER_STRATEGIES = sorted(set(STRATEGIES) - {"fltrust"}) + ["krum+bucketing"]


@pytest.mark.parametrize("name", ORDER_STRATEGIES)
def test_same_updates_in_any_arrival_order_give_the_same_block(tmp_path, name):
    rules = _order_rules(name)
    base = {"w": torch.zeros(4, 5), "b": torch.zeros(3)}
    model = update_to_bytes(base)
    genesis = make_genesis(
        members=[k.public_key for k in ORDER_KEYS],
        config={"clients": 9, "byzantine": 1, "chain": {"max_update_mb": 64}, "strategy": {"_target_": "x"}},
        model_hash=sha256_hex(model), miner=MINER, difficulty=DIFFICULTY, time_ms=0,
    )
    ledger = Ledger.create(tmp_path / "ledger", genesis, blobs=[model])
    node = Node(ledger=ledger, rules=rules, key=MINER, difficulty=DIFFICULTY)
    subs = [Submission(tx, payload) for tx, payload, _ in _order_updates((4, 5), ledger.head.hash)]
    shuffled = list(subs)
    random.Random(3).shuffle(shuffled)
    results = []
    for order in (subs, list(reversed(subs)), shuffled):
        prepared = node.prepare(1, order, base, time_ms=1)
        results.append((prepared.block.hash, prepared.result.model_bytes, prepared.trust))
    assert results[0] == results[1] == results[2]
    assert len(results[0][2]) == 9


@pytest.mark.parametrize("name", ["median", "krum+bucketing", "geomed", "centered_clipping"])
def test_aggregation_does_not_depend_on_the_thread_count(name):
    # Large enough that torch would split reductions across threads.
    inputs = _order_inputs((64, 1024))
    base = {"w": torch.zeros(64, 1024), "b": torch.zeros(3)}
    rules = _order_rules(name)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, max(2, before)):
            torch.set_num_threads(threads)
            result = execute_round(rules, base, {}, inputs)
            results.append((result.model_hash, result.trust, result.state_hash))
    finally:
        torch.set_num_threads(before)
    assert results[0] == results[1]


def test_bucketing_permutation_depends_on_the_accepted_updates_and_not_on_block_hashes():
    # The seed covers the config hash, the round and each accepted (client, update hash). The
    # same updates signed against another base (a parent mined at another time) give the same
    # permutation and the same model; one update fewer, or another round, gives another seed.
    rules = _order_rules("krum+bucketing")
    base = {"w": torch.zeros(4, 5), "b": torch.zeros(3)}
    first = _order_inputs((4, 5), "ab" * 32)
    other = sorted(_order_updates((4, 5), "cd" * 32), key=lambda u: u[0].client)
    rebased = dataclasses.replace(first, transactions=tuple(t for t, _, _ in other))
    fewer = dataclasses.replace(first, transactions=first.transactions[1:], updates=first.updates[1:])
    seed, rebased_seed, fewer_seed = (rules.randomness(i.round, i.transactions) for i in (first, rebased, fewer))
    assert seed == rebased_seed != fewer_seed
    assert rules.randomness(2, first.transactions) != seed
    assert seed == round_randomness(rules.config_hash, 1, [(tx.client, tx.update_hash) for tx in first.transactions])
    perm = [torch.randperm(9, generator=round_generator(r)).tolist() for r in (seed, fewer_seed)]
    assert perm[0] != perm[1]
    a = execute_round(rules, base, {}, first)
    b = execute_round(rules, base, {}, rebased)
    assert (a.model_hash, a.trust, a.randomness) == (b.model_hash, b.trust, b.randomness)
    # ... and the outcome is a pure function of those transactions.
    assert execute_round(rules, base, {}, first).model_hash == a.model_hash


def test_round_randomness_is_recorded_and_checked_by_replay(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", MEDIAN)
    node = _node(ledger, Median())
    prepared = node.prepare(1, _submissions(ledger, 1), state, time_ms=1_700_000_000_001)
    block = prepared.block
    assert block.meta["randomness"] == round_randomness(
        ledger.genesis.header.config_hash, 1, [(tx.client, tx.update_hash) for tx in block.transactions]
    )
    # The same block, but recording another seed (Median ignores it: only the record is wrong).
    forged = make_block(
        prev=ledger.head, round=1, transactions=block.transactions,
        meta={**block.meta, "randomness": "0" * 64}, model_hash=block.header.model_hash,
        miner=MINER, difficulty=DIFFICULTY, time_ms=1_700_000_000_001,
    )
    for blob in prepared.blobs:
        ledger.put_blob(blob)
    ledger.append(forged)
    with pytest.raises(ReplayMismatch, match="recorded randomness") as caught:
        audit_ledger(ledger.path)
    assert caught.value.block == block_file_name(forged)


# -- replay checks that verification cannot make -------------------------------------------------


def test_node_that_aggregated_with_another_rule_fails_at_round_1(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", MEDIAN)
    node = _node(ledger, FedAvg())  # records Median, aggregates with FedAvg
    state = _mine(node, state, 1)
    _mine(node, state, 2)
    seen = []
    with pytest.raises(ReplayMismatch) as caught:
        audit_ledger(ledger.path, on_round=seen.append)
    assert caught.value.block == block_file_name(ledger.blocks()[1])
    assert "round 1" in str(caught.value)
    assert caught.value.replayed_model_hash != caught.value.recorded_model_hash
    assert [(r.round, r.matches, r.model_matches) for r in seen] == [(1, False, False)]


def test_rejected_submissions_are_counted_and_the_rest_replays(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", MEDIAN)
    node = _node(ledger, Median())
    state = _mine(node, state, 1, forge_last=True)
    _mine(node, state, 2)
    report = audit_ledger(ledger.path)
    assert [(r.accepted, r.rejected) for r in report.rounds] == [(3, 1), (4, 0)]
    assert ledger.blocks()[1].meta["rejected"]["counts"] == {"bad_signature": 1}
    for replay, block in zip(report.rounds, ledger.blocks()[1:]):
        assert replay.trusted == sum(1 for w in block.meta["trust"].values() if w > 0)


def test_stateful_strategy_replays_with_its_state_carried_in_the_chain(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", CENTERED_CLIPPING)
    node = _node(ledger, CenteredClipping(tau=0.5))
    for rnd in (1, 2, 3):
        state = _mine(node, state, rnd)
    blocks = ledger.blocks()[1:]
    assert all(b.meta["state"] is not None and ledger.has_blob(b.meta["state"]) for b in blocks)
    assert len({b.meta["state"] for b in blocks}) == 3
    assert [r.matches for r in audit_ledger(ledger.path).rounds] == [True, True, True]
    # From the chain alone: the replay from height 2 starts from block 1's model and state blob.
    assert [(r.round, r.matches) for r in audit_ledger(ledger.path, start=2).rounds] == [(2, True), (3, True)]


def test_stateful_strategy_reset_by_the_node_fails_at_that_round(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", CENTERED_CLIPPING)
    node = _node(ledger, CenteredClipping(tau=0.5))
    state = _mine(node, state, 1)
    node.round_state = {}  # the centre was lost between rounds
    _mine(node, state, 2)
    seen = []
    with pytest.raises(ReplayMismatch) as caught:
        audit_ledger(ledger.path, on_round=seen.append)
    assert [(r.round, r.matches) for r in seen] == [(1, True), (2, False)]
    assert caught.value.block == block_file_name(ledger.blocks()[2])


def test_fltrust_replays_with_the_recorded_reference(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", FLTRUST)
    node = _node(ledger, build_strategy(FLTRUST, num_clients=4, num_byzantine=1))
    state = _mine(node, state, 1, reference=_update(0, 9))
    _mine(node, state, 2, reference=_update(1, 9))
    reference = ledger.blocks()[1].meta["reference"]
    assert reference == sha256_hex(update_to_bytes(_update(0, 9))) and ledger.has_blob(reference)
    report = audit_ledger(ledger.path)
    assert all(r.matches and r.trusted >= 1 for r in report.rounds)


def test_fltrust_block_without_a_reference_is_refused(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", FLTRUST)
    name = _append_raw(ledger, [_update(0, 1)], meta=_record_meta(), model_bytes=update_to_bytes(state))
    with pytest.raises(ReplayMismatch, match="reference") as caught:
        audit_ledger(ledger.path)
    assert caught.value.block == name


def test_recorded_trust_that_differs_from_the_replay_is_a_mismatch(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", FEDAVG)
    updates = [_update(i, 1) for i in range(2)]
    txs = sorted(
        (_signed(k, update_to_bytes(u), rnd=1, base_hash=ledger.head.hash) for k, u in zip(KEYS, updates)),
        key=lambda t: t.client,
    )
    by_client = {KEYS[i].public_key: u for i, u in enumerate(updates)}
    inputs = RoundInputs(1, tuple(txs), tuple(by_client[t.client] for t in txs))
    result = execute_round(_rules(FedAvg()), state, {}, inputs)
    assert sorted(result.trust.values()) == [0.5, 0.5]
    # The right model with a false story of who it relied on.
    claimed = {tx.client: (1.0 if i == 0 else 0.0) for i, tx in enumerate(txs)}
    name = _append_raw(
        ledger, updates, meta=_record_meta(trust=claimed, state=result.state_hash), model_bytes=result.model_bytes,
        blobs=[result.state_bytes] if result.state_bytes is not None else [],
    )
    seen = []
    with pytest.raises(ReplayMismatch, match=r"records trust 1\.0 for client [0-9a-f]{12} where the strategy gives 0\.5") as caught:
        audit_ledger(ledger.path, on_round=seen.append)
    assert caught.value.block == name
    assert caught.value.replayed_model_hash == caught.value.recorded_model_hash
    assert seen[0].model_matches and not seen[0].trust_matches


# -- bad input gets a LedgerError naming the block ------------------------------------------------


def _tensors(**overrides):
    tensors = {"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)}
    tensors.update(overrides)
    return update_to_bytes(tensors)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(b"not safetensors at all", "malformed", id="garbage"),
        pytest.param(_tensors(**{"fc.weight": torch.zeros(3, 2)}), "fc.weight", id="wrong-shape"),
        pytest.param(_tensors(**{"fc.bias": torch.zeros(2, dtype=torch.float64)}), "float64", id="wrong-dtype"),
        pytest.param(_tensors(**{"fc.bias": torch.tensor([0.0, float("nan")])}), "NaN", id="nan"),
        pytest.param(_tensors(extra=torch.zeros(1)), "tensor names", id="extra-tensor"),
    ],
)
def test_malformed_update_blob_is_a_ledger_error_naming_the_block(tmp_path, payload, message):
    ledger, state = _genesis_ledger(tmp_path / "ledger", MEDIAN)
    name = _append_raw(ledger, [payload], meta=_record_meta(), model_bytes=update_to_bytes(state))
    with pytest.raises(LedgerError, match=message) as caught:
        audit_ledger(ledger.path)
    assert caught.value.block == name
    assert "transaction 0" in caught.value.reason


def test_malformed_genesis_model_is_a_ledger_error_naming_genesis(tmp_path):
    junk = b"junk model bytes"
    genesis = make_genesis(
        members=[k.public_key for k in KEYS],
        config=_config(MEDIAN),
        model_hash=sha256_hex(junk), miner=MINER, difficulty=DIFFICULTY, time_ms=0,
    )
    ledger = Ledger.create(tmp_path / "ledger", genesis, blobs=[junk])
    with pytest.raises(LedgerError, match="model blob") as caught:
        audit_ledger(ledger.path)
    assert not isinstance(caught.value, ReplayMismatch)
    assert caught.value.block == block_file_name(genesis)


def test_malformed_round_meta_is_a_ledger_error_naming_the_block(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", MEDIAN)

    def meta(parent, txs):
        return {**_record_meta()(parent, txs), "rejected": "none"}

    name = _append_raw(ledger, [_tensors()], meta=meta, model_bytes=update_to_bytes(state))
    with pytest.raises(LedgerError, match="rejected") as caught:
        audit_ledger(ledger.path)
    assert caught.value.block == name


def test_verification_runs_first(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", MEDIAN)
    _mine(_node(ledger, Median()), state, 1)
    tx = ledger.blocks()[1].transactions[0]
    ledger.blob_path(tx.update_hash).write_bytes(b"tampered")
    with pytest.raises(LedgerError, match="corrupt") as caught:
        audit_ledger(ledger.path)
    assert not isinstance(caught.value, ReplayMismatch)
    assert caught.value.block == block_file_name(ledger.blocks()[1])


def test_audit_needs_no_seed_in_the_genesis_config(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", MEDIAN, seed=False)
    assert "seed" not in ledger.config
    node = _node(ledger, Median())
    state = _mine(node, state, 1)
    _mine(node, state, 2)
    assert [r.matches for r in audit_ledger(ledger.path).rounds] == [True, True]


# -- the recorded strategy -----------------------------------------------------------------------


def test_strategy_that_is_not_built_in_is_not_imported(tmp_path):
    ledger, _ = _genesis_ledger(tmp_path / "ledger", {"_target_": "no_such_package.rules.Average", "f": None})
    with pytest.raises(LedgerError, match="no_such_package.rules.Average") as caught:
        audit_ledger(ledger.path)
    assert not isinstance(caught.value, ReplayMismatch)
    assert caught.value.block == block_file_name(ledger.genesis)
    assert "not built in" in caught.value.reason and "--trust no_such_package.rules.Average" in caught.value.reason


def test_trusted_but_unimportable_strategy_is_named(tmp_path):
    ledger, _ = _genesis_ledger(tmp_path / "ledger", {"_target_": "no_such_package.rules.Average", "f": None})
    with pytest.raises(LedgerError, match="cannot be imported") as caught:
        audit_ledger(ledger.path, trust=["no_such_package.rules.Average"])
    assert caught.value.block == block_file_name(ledger.genesis)
    assert "no_such_package.rules.Average" in caught.value.reason


@pytest.mark.parametrize("trust", [(), ("os.makedirs",)], ids=["untrusted", "trusted"])
def test_a_target_that_is_not_a_strategy_is_never_called(tmp_path, trust):
    victim = tmp_path / "created-by-the-ledger"
    ledger, _ = _genesis_ledger(tmp_path / "ledger", {"_target_": "os.makedirs", "name": str(victim)})
    with pytest.raises(LedgerError, match="os.makedirs") as caught:
        audit_ledger(ledger.path, trust=trust)
    assert caught.value.block == block_file_name(ledger.genesis)
    assert not victim.exists()


def test_a_nested_target_is_checked_too(tmp_path):
    victim = tmp_path / "created-by-the-ledger"
    node = {"_target_": "torchchain.strategies.Median", "f": None, "pre": [{"_target_": "os.makedirs", "name": str(victim)}]}
    with pytest.raises(ConfigError, match=r"strategy\.pre\[0\]"):
        RoundRules.from_config(_config(node), MEMBERS)
    ledger, _ = _genesis_ledger(tmp_path / "ledger", node)
    with pytest.raises(LedgerError, match=r"strategy\.pre\[0\]") as caught:
        audit_ledger(ledger.path)
    assert caught.value.block == block_file_name(ledger.genesis)
    assert not victim.exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param({"clients": 4, "byzantine": 1, "chain": {"max_update_mb": 1}}, "_target_", id="no-strategy"),
        pytest.param({"clients": 4, "chain": {"max_update_mb": 1}, "strategy": MEDIAN}, "byzantine", id="no-byzantine"),
        pytest.param({"clients": 4, "byzantine": 1, "strategy": MEDIAN}, "max_update_mb", id="no-max-update"),
        pytest.param(_config({**MEDIAN, "f": -1}), r"(?i)median.*\bf must be", id="bad-argument"),
        pytest.param(_config({**MEDIAN, "f": "${oc.env:HOME}"}), "interpolation", id="interpolation"),
        pytest.param(
            _config({"_target_": "torchchain.strategies.Krum", "f": None, "pre": []}), r"krum needs n >= 2f\+3 clients, got n=4, f=1",
            id="setup-refused",
        ),
    ],
)
def test_unusable_recorded_strategy_config_is_refused(tmp_path, config, message):
    with pytest.raises(ConfigError, match=message):
        RoundRules.from_config(config, MEMBERS)
    state = _model()
    model = update_to_bytes(state)
    genesis = make_genesis(
        members=[k.public_key for k in KEYS], config=config, model_hash=sha256_hex(model),
        miner=MINER, difficulty=DIFFICULTY, time_ms=0,
    )
    ledger = Ledger.create(tmp_path / "ledger", genesis, blobs=[model])
    with pytest.raises(LedgerError, match="cannot be rebuilt") as caught:
        audit_ledger(ledger.path)
    assert caught.value.block == block_file_name(genesis)


def test_recorded_strategy_is_set_up_with_the_recorded_counts():
    node = {"_target_": "torchchain.strategies.Krum", "f": None, "pre": ["bucketing"]}
    strategy = build_strategy(node, num_clients=9, num_byzantine=1)
    assert isinstance(strategy, Krum)
    assert strategy.f == 1 and strategy.num_clients == 9
    assert [step.name for step in strategy.pre] == ["bucketing"]
