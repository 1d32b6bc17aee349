"""Auditing replays every round from the ledger alone and catches a node that aggregated otherwise."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from torchchain.audit import ReplayMismatch, audit_ledger, build_recorded_strategy
from torchchain.chain.block import Transaction, make_block, make_genesis
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.ledger import Ledger, block_file_name
from torchchain.errors import LedgerError
from torchchain.experiment import run
from torchchain.runtime.node import Node, Submission, aggregate_round
from torchchain.runtime.simulation import derive_generator
from torchchain.strategies import STRATEGIES, CenteredClipping, FedAvg, FLTrust, Krum, Median
from torchchain.updates.serialize import update_to_bytes

from composing import FAST, compose_config

KEYS = [SigningKey.from_seed_material(f"audit-test/client/{i}") for i in range(4)]
MINER = SigningKey.from_seed_material("audit-test/miner")
SEED = 7
DIFFICULTY = 4
MEDIAN = {"_target_": "torchchain.strategies.Median", "f": None, "pre": []}
CENTERED_CLIPPING = {
    "_target_": "torchchain.strategies.CenteredClipping", "tau": 0.5, "iterations": 1, "f": None, "pre": []
}


# -- ledgers written directly by a Node, so a test controls what the node really did -----------


def _model() -> dict[str, torch.Tensor]:
    return {"fc.weight": torch.linspace(-1.0, 1.0, 6).reshape(2, 3), "fc.bias": torch.zeros(2)}


def _update(client: int, rnd: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * rnd + client)
    return {"fc.weight": torch.randn(2, 3, generator=g), "fc.bias": torch.randn(2, generator=g)}


def _genesis_ledger(path, strategy_node) -> tuple[Ledger, dict[str, torch.Tensor]]:
    state = _model()
    model = update_to_bytes(state)
    genesis = make_genesis(
        members=[k.public_key for k in KEYS],
        config={"seed": SEED, "clients": 4, "byzantine": 1, "strategy": strategy_node},
        model_hash=sha256_hex(model),
        miner=MINER.public_key,
        difficulty=DIFFICULTY,
        time_ms=1_700_000_000_000,
    )
    return Ledger.create(path, genesis, blobs=[model]), state


def _signed(key: SigningKey, payload: bytes, *, rnd: int, base_hash: str, num_samples: int = 10) -> Transaction:
    tx = Transaction(
        client=key.public_key, round=rnd, base_hash=base_hash, update_hash=sha256_hex(payload), num_samples=num_samples
    )
    return tx.signed(key)


def _mine(ledger: Ledger, strategy, state, rnd: int, *, forge_last: bool = False):
    """One round by a real Node using ``strategy``; the last client's claim is forged if asked."""
    payloads = [update_to_bytes(_update(i, rnd)) for i in range(len(KEYS))]
    subs = [Submission(_signed(k, p, rnd=rnd, base_hash=ledger.head.hash), p) for k, p in zip(KEYS, payloads)]
    if forge_last:
        subs[-1] = Submission(dataclasses.replace(subs[-1].transaction, num_samples=999), subs[-1].payload)
    node = Node(ledger=ledger, strategy=strategy, key=MINER, difficulty=DIFFICULTY, max_update_bytes=1 << 20)
    generator = derive_generator(SEED, "aggregate", rnd)
    return node.mine_round(rnd, subs, state, generator=generator, time_ms=1_700_000_000_000 + rnd).state


def _set_up(strategy):
    strategy.setup(num_clients=4, num_byzantine=1)
    return strategy


def _append_raw(ledger: Ledger, updates: list, *, meta: dict, model_bytes: bytes) -> str:
    """Append a round-1 block holding exactly these updates (tensors or raw bytes), bypassing the node."""
    payloads = [u if isinstance(u, bytes) else update_to_bytes(u) for u in updates]
    txs = [_signed(k, p, rnd=1, base_hash=ledger.head.hash) for k, p in zip(KEYS, payloads)]
    for payload in [*payloads, model_bytes]:
        ledger.put_blob(payload)
    block = make_block(
        prev=ledger.head,
        round=1,
        transactions=sorted(txs, key=lambda t: t.client),
        meta=meta,
        model_hash=sha256_hex(model_bytes),
        miner=MINER.public_key,
        difficulty=DIFFICULTY,
        time_ms=1_700_000_000_001,
    )
    ledger.append(block)
    return block_file_name(block)


def _aggregate_raw(ledger: Ledger, strategy, state, updates: list, *, reference=None):
    """What an honest node computes for round 1 from ``updates``, sent by the first clients."""
    txs = [_signed(k, update_to_bytes(u), rnd=1, base_hash=ledger.head.hash) for k, u in zip(KEYS, updates)]
    generator = derive_generator(SEED, "aggregate", 1)
    return aggregate_round(strategy, state, list(zip(txs, updates)), generator=generator, reference=reference)


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
    report = audit_ledger(summary["ledger"], on_round=seen.append)
    assert [r.round for r in report.rounds] == [1, 2, 3]
    assert list(report.rounds) == seen
    assert all(r.matches for r in report.rounds)
    assert report.rounds[-1].replayed_model_hash == summary["model_hash"]
    assert report.verify.head == summary["head"]
    if "attack=signflip" in overrides and "strategy.pre=[bucketing]" in overrides:
        # Krum keeps one bucket: most clients get no weight, and the replay says so.
        assert all(0 < r.trusted < r.accepted for r in report.rounds)


# -- aggregation is bit-identical ---------------------------------------------------------------


def _round_inputs(n: int, shape: tuple[int, ...]):
    keys = [SigningKey.from_seed_material(f"order-test/{i}") for i in range(n)]
    base = {"w": torch.zeros(shape), "b": torch.zeros(3)}
    updates = []
    for i, key in enumerate(keys):
        g = torch.Generator().manual_seed(i)
        tensors = {"w": torch.randn(shape, generator=g) * (1 + i), "b": torch.randn(3, generator=g)}
        updates.append((_signed(key, update_to_bytes(tensors), rnd=1, base_hash="ab" * 32, num_samples=10 + i), tensors))
    return base, updates


def _strategy(name: str):
    strategy = Krum(pre=["bucketing"]) if name == "krum+bucketing" else STRATEGIES[name]()
    strategy.setup(num_clients=9, num_byzantine=1)
    return strategy


ORDER_STRATEGIES = sorted(set(STRATEGIES) - {"fltrust"}) + ["krum+bucketing"]


@pytest.mark.parametrize("name", ORDER_STRATEGIES)
def test_same_updates_in_any_arrival_order_give_the_same_model_bytes(name):
    base, updates = _round_inputs(9, (4, 5))
    shuffled = list(updates)
    random.Random(3).shuffle(shuffled)
    results = []
    for order in (updates, list(reversed(updates)), shuffled):
        state, trust = aggregate_round(_strategy(name), base, order, generator=derive_generator(SEED, "aggregate", 1))
        results.append((update_to_bytes(state), trust))
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("name", ["median", "krum+bucketing", "geomed", "centered_clipping"])
def test_aggregation_does_not_depend_on_the_thread_count(name):
    # Large enough that torch would split reductions across threads.
    base, updates = _round_inputs(9, (64, 1024))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, max(2, before)):
            torch.set_num_threads(threads)
            state, trust = aggregate_round(_strategy(name), base, updates, generator=derive_generator(SEED, "aggregate", 1))
            results.append((sha256_hex(update_to_bytes(state)), trust))
    finally:
        torch.set_num_threads(before)
    assert results[0] == results[1]


# -- replay checks that verification cannot make -------------------------------------------------


def test_node_that_aggregated_with_another_rule_fails_at_round_1(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", MEDIAN)
    _mine(ledger, _set_up(FedAvg()), state, 1)  # records Median, aggregates with FedAvg
    seen = []
    with pytest.raises(ReplayMismatch) as caught:
        audit_ledger(ledger.path, on_round=seen.append)
    assert caught.value.block == block_file_name(ledger.blocks()[1])
    assert "round 1" in str(caught.value) and "torchchain.strategies.Median" in str(caught.value)
    assert caught.value.replay.model_matches is False
    assert [r.matches for r in seen] == [False]


def test_rejected_submissions_are_counted_and_the_rest_replays(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", MEDIAN)
    state = _mine(ledger, _set_up(Median()), state, 1, forge_last=True)
    _mine(ledger, _set_up(Median()), state, 2)
    report = audit_ledger(ledger.path)
    assert [(r.accepted, r.rejected) for r in report.rounds] == [(3, 1), (4, 0)]
    for replay, block in zip(report.rounds, ledger.blocks()[1:]):
        assert replay.trusted == sum(1 for w in block.meta["trust"].values() if w > 0)


def test_stateful_strategy_replays_with_its_state_carried_over(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", CENTERED_CLIPPING)
    strategy = _set_up(CenteredClipping(tau=0.5))
    for rnd in (1, 2, 3):
        state = _mine(ledger, strategy, state, rnd)
    assert [r.matches for r in audit_ledger(ledger.path).rounds] == [True, True, True]


def test_stateful_strategy_reset_by_the_node_fails_at_that_round(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", CENTERED_CLIPPING)
    state = _mine(ledger, _set_up(CenteredClipping(tau=0.5)), state, 1)
    _mine(ledger, _set_up(CenteredClipping(tau=0.5)), state, 2)  # the centre was lost between rounds
    with pytest.raises(ReplayMismatch) as caught:
        audit_ledger(ledger.path)
    assert caught.value.replay.round == 2
    assert caught.value.block == block_file_name(ledger.blocks()[2])


FLTRUST = {"_target_": "torchchain.strategies.FLTrust", "root_samples": 100, "f": None, "pre": []}


def test_fltrust_replays_with_the_recorded_reference(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", FLTRUST)
    updates = [_update(i, 1) for i in range(4)]
    reference = _update(0, 9)
    new_state, trust = _aggregate_raw(ledger, _set_up(FLTrust()), state, updates, reference=reference)
    meta = {"rejected": [], "trust": trust, "reference": ledger.put_blob(update_to_bytes(reference))}
    _append_raw(ledger, updates, meta=meta, model_bytes=update_to_bytes(new_state))
    report = audit_ledger(ledger.path)
    assert report.rounds[0].matches and report.rounds[0].trusted >= 1


def test_fltrust_block_without_a_reference_is_refused(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", FLTRUST)
    name = _append_raw(ledger, [_update(0, 1)], meta={"rejected": [], "trust": {}}, model_bytes=update_to_bytes(state))
    with pytest.raises(LedgerError, match="reference") as caught:
        audit_ledger(ledger.path)
    assert caught.value.block == name


def test_recorded_trust_that_differs_from_the_replay_is_a_mismatch(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", {"_target_": "torchchain.strategies.FedAvg", "f": None, "pre": []})
    updates = [_update(i, 1) for i in range(2)]
    new_state, trust = _aggregate_raw(ledger, _set_up(FedAvg()), state, updates)
    # The right model with a false story of who it relied on.
    claimed = {client: (1.0 if i == 0 else 0.0) for i, client in enumerate(sorted(trust))}
    _append_raw(ledger, updates, meta={"rejected": [], "trust": claimed}, model_bytes=update_to_bytes(new_state))
    with pytest.raises(ReplayMismatch, match=r"records trust 1\.0 for client [0-9a-f]{12} where torchchain.strategies.FedAvg gives 0\.5") as caught:
        audit_ledger(ledger.path)
    assert caught.value.replay.model_matches and not caught.value.replay.trust_matches


# -- bad input gets a LedgerError naming the block ------------------------------------------------


def _tensors(**overrides):
    tensors = {"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)}
    tensors.update(overrides)
    return update_to_bytes(tensors)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(b"not safetensors at all", "not a valid update", id="garbage"),
        pytest.param(_tensors(**{"fc.weight": torch.zeros(3, 2)}), "fc.weight", id="wrong-shape"),
        pytest.param(_tensors(**{"fc.bias": torch.zeros(2, dtype=torch.float64)}), "float64", id="wrong-dtype"),
        pytest.param(_tensors(**{"fc.bias": torch.tensor([0.0, float("nan")])}), "NaN", id="nan"),
        pytest.param(_tensors(extra=torch.zeros(1)), "tensors", id="extra-tensor"),
    ],
)
def test_malformed_update_blob_is_a_ledger_error_naming_the_block(tmp_path, payload, message):
    ledger, state = _genesis_ledger(tmp_path / "ledger", MEDIAN)
    name = _append_raw(ledger, [payload], meta={"rejected": [], "trust": {}}, model_bytes=update_to_bytes(state))
    with pytest.raises(LedgerError, match=message) as caught:
        audit_ledger(ledger.path)
    assert caught.value.block == name
    assert "transaction 0" in caught.value.reason


def test_malformed_genesis_model_is_a_ledger_error_naming_genesis(tmp_path):
    junk = b"junk model bytes"
    genesis = make_genesis(
        members=[k.public_key for k in KEYS],
        config={"seed": SEED, "clients": 4, "byzantine": 1, "strategy": MEDIAN},
        model_hash=sha256_hex(junk), miner=MINER.public_key, difficulty=DIFFICULTY, time_ms=0,
    )
    ledger = Ledger.create(tmp_path / "ledger", genesis, blobs=[junk])
    with pytest.raises(LedgerError, match="initial model") as caught:
        audit_ledger(ledger.path)
    assert caught.value.block == block_file_name(genesis)


def test_malformed_round_meta_is_a_ledger_error_naming_the_block(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", MEDIAN)
    name = _append_raw(ledger, [_tensors()], meta={"rejected": "none", "trust": {}}, model_bytes=update_to_bytes(state))
    with pytest.raises(LedgerError, match="rejected") as caught:
        audit_ledger(ledger.path)
    assert caught.value.block == name


def test_verification_runs_first(tmp_path):
    ledger, state = _genesis_ledger(tmp_path / "ledger", MEDIAN)
    _mine(ledger, _set_up(Median()), state, 1)
    tx = ledger.blocks()[1].transactions[0]
    ledger.blob_path(tx.update_hash).write_bytes(b"tampered")
    with pytest.raises(LedgerError, match="corrupt") as caught:
        audit_ledger(ledger.path)
    assert not isinstance(caught.value, ReplayMismatch)
    assert caught.value.block == block_file_name(ledger.blocks()[1])


# -- the recorded strategy -----------------------------------------------------------------------


def test_unimportable_strategy_is_named(tmp_path):
    ledger, _ = _genesis_ledger(tmp_path / "ledger", {"_target_": "no_such_package.rules.Average", "f": None})
    with pytest.raises(LedgerError, match="no_such_package.rules.Average") as caught:
        audit_ledger(ledger.path)
    assert caught.value.block == block_file_name(ledger.genesis)
    assert "install" in caught.value.reason


def test_a_target_that_is_not_a_strategy_is_never_called(tmp_path):
    victim = tmp_path / "created-by-the-ledger"
    ledger, _ = _genesis_ledger(tmp_path / "ledger", {"_target_": "os.makedirs", "name": str(victim)})
    with pytest.raises(LedgerError, match="os.makedirs"):
        audit_ledger(ledger.path)
    assert not victim.exists()


def test_a_nested_target_is_checked_too(tmp_path):
    victim = tmp_path / "created-by-the-ledger"
    node = {"_target_": "torchchain.strategies.Median", "f": None, "pre": [{"_target_": "os.makedirs", "name": str(victim)}]}
    with pytest.raises(LedgerError, match=r"strategy\.pre\[0\]"):
        build_recorded_strategy({"clients": 4, "byzantine": 1, "strategy": node})
    assert not victim.exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param({"clients": 4, "byzantine": 1}, "no 'strategy'", id="no-strategy"),
        pytest.param({"clients": 4, "strategy": MEDIAN}, "byzantine", id="no-byzantine"),
        pytest.param({"clients": 4, "byzantine": 1, "strategy": {**MEDIAN, "f": -1}}, "Median", id="bad-argument"),
        pytest.param(
            {"clients": 4, "byzantine": 1, "strategy": {"_target_": "torchchain.strategies.Krum", "f": None, "pre": []}},
            "refuses clients=4, byzantine=1",
            id="setup-refused",
        ),
    ],
)
def test_unusable_recorded_strategy_config_is_a_ledger_error(config, message):
    with pytest.raises(LedgerError, match=message):
        build_recorded_strategy(config)


def test_recorded_strategy_is_set_up_with_the_recorded_counts():
    node = {"_target_": "torchchain.strategies.Krum", "f": None, "pre": ["bucketing"]}
    strategy = build_recorded_strategy({"clients": 9, "byzantine": 1, "strategy": node})
    assert isinstance(strategy, Krum)
    assert strategy.f == 1 and strategy.num_clients == 9
    assert [step.name for step in strategy.pre] == ["bucketing"]


def test_genesis_config_without_a_seed_cannot_be_replayed(tmp_path):
    state = _model()
    model = update_to_bytes(state)
    genesis = make_genesis(
        members=[k.public_key for k in KEYS],
        config={"clients": 4, "byzantine": 1, "strategy": MEDIAN},
        model_hash=sha256_hex(model), miner=MINER.public_key, difficulty=DIFFICULTY, time_ms=0,
    )
    ledger = Ledger.create(tmp_path / "ledger", genesis, blobs=[model])
    with pytest.raises(LedgerError, match="'seed'") as caught:
        audit_ledger(ledger.path)
    assert caught.value.block == block_file_name(genesis)
