"""Peers in one process: every peer keeps its own ledger, checks every proposal on its own, and
commits only what a strict majority of the peers attested; Byzantine peers change nothing that
the honest ones commit, and a ledger's attestations are recounted by the audit."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from composing import FAST, compose_config
from torchchain.chain.encoding import canonical_json
from torchchain.chain.ledger import ATTESTATIONS_DIR, BLOCKS_DIR, Ledger
from torchchain.chain.verify import verify_ledger
from torchchain.data import load_digits
from torchchain.errors import ConfigError
from torchchain.experiment import run
from torchchain.protocol.attestation import AttestationError, Attestation, decode_attestation_set
from torchchain.protocol.audit import audit_ledger
from torchchain.runtime.client import LocalTraining
from torchchain.runtime.peer import ConsensusError, Peer, peer_key, run_in_process
from torchchain.runtime.peer_behaviour import Fault, PeerFault
from torchchain.runtime.simulation import SimulationSettings
from torchchain.runtime.transport import TransportError
from torchchain.models import LinearRegression

SEED = 0
CLIENTS = 4
ROUNDS = 2
DIFFICULTY = 8
CONFIG = {
    "seed": SEED,
    "clients": CLIENTS,
    "byzantine": 0,
    "strategy": {"_target_": "torchchain.strategies.Median", "f": None, "pre": []},
    "chain": {"difficulty": DIFFICULTY, "max_update_mb": 64},
}


@pytest.fixture(scope="module")
def task():
    data = load_digits(test_fraction=0.2, seed=SEED)
    torch.manual_seed(SEED)
    model = LinearRegression(input_shape=list(data.input_shape), num_outputs=data.num_outputs)
    settings = SimulationSettings(
        clients=CLIENTS, rounds=ROUNDS, byzantine=0, seed=SEED, device=torch.device("cpu"),
        training=LocalTraining(epochs=1, batch_size=32, lr=0.3), difficulty=DIFFICULTY, progress=False,
    )
    return data, model, settings


def _run(task, run_dir: Path, *, peers: int = 3, faults=None, config=CONFIG, attack=None, clock=None, **changes):
    data, model, settings = task
    if changes:
        import dataclasses

        settings = dataclasses.replace(settings, **changes)
    return run_in_process(
        data=data, model=model, settings=settings, config=config, run_dir=run_dir, peers=peers, faults=faults,
        attack=attack, timeout=30, clock=clock,
    )


def _files(ledger: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(ledger)): p.read_bytes()
        for p in sorted(ledger.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture(scope="module")
def honest(task, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("honest")
    return run_dir, _run(task, run_dir)


def test_honest_peers_hold_byte_identical_ledgers_that_audit(honest):
    run_dir, outcomes = honest
    assert [o.error for o in outcomes] == [None, None, None]
    assert {o.height for o in outcomes} == {ROUNDS}
    assert len({o.head for o in outcomes}) == 1
    files = [_files(o.ledger) for o in outcomes]
    assert files[0] == files[1] == files[2]
    # One block file per height, blobs, and one attestation set per round block.
    assert sum(name.startswith(BLOCKS_DIR) for name in files[0]) == ROUNDS + 1
    assert sum(name.startswith(ATTESTATIONS_DIR) for name in files[0]) == ROUNDS
    for outcome in outcomes:
        assert [e.kind for e in outcome.events] == ["committed"] * ROUNDS
        report = audit_ledger(outcome.ledger)
        assert (report.attested, report.peers, len(report.rounds)) == (ROUNDS, 3, ROUNDS)
        assert "attestations OK" in report.summary()
        assert outcome.metrics["accuracy"] > 0.5


def test_every_peer_is_a_genesis_miner_and_every_block_carries_their_attestations(honest):
    run_dir, outcomes = honest
    keys = [peer_key(SEED, k).public_key for k in range(3)]
    with Ledger.open(outcomes[0].ledger) as ledger:
        assert ledger.miners == tuple(sorted(keys))
        assert ledger.genesis.header.miner == keys[0]
        for block in ledger.iter_blocks(1):
            data = ledger.get_attestations(block.hash, max_bytes=1 << 16)
            attestations = decode_attestation_set(data, block_hash=block.hash, height=block.header.height, max_bytes=1 << 16)
            assert sorted(a.peer for a in attestations) == sorted(keys)
            assert all(a.verdict == "accept" for a in attestations)


def test_peers_compute_the_model_a_single_node_simulation_computes(task, honest, tmp_path):
    # Same clients, keys, partition and random streams: the peers' chain ends at the model a
    # one-node simulation of the same config commits.
    summary = run(compose_config([*FAST, "clients=4", "rounds=2", "model=linear", "strategy=median"]), tmp_path / "sim")
    assert honest[1][0].model_hash == summary["model_hash"]


@pytest.mark.parametrize("peers", [3, 4])
@pytest.mark.parametrize(
    ("fault", "kind", "reason"),
    [
        (Fault.BAD_NONCE, "rejected", "proof of work does not meet the header's difficulty"),
        (Fault.WRONG_MODEL, "rejected", "its model is not the aggregate of its accepted updates"),
        (Fault.DROP_TX, "rejected", "the block omits the accepted transaction of client"),
        (Fault.WITHHOLD, "rejected", "withheld its block"),
        (Fault.EQUIVOCATE, "equivocation", "signed 2 different blocks for height"),
        (Fault.FORGE_ATTESTATION, "invalid_attestation", "signature does not match peer"),
    ],
)
def test_one_byzantine_peer_changes_nothing_the_honest_peers_commit(task, honest, tmp_path, caplog, peers, fault, kind, reason):
    bad = peers - 1
    with caplog.at_level(logging.WARNING, logger="torchchain.peer"):
        # A fixed clock fixes every nonce: with the system clock an honest peer's nonce is 0 about
        # once in 256 rounds, ties the faulty peer's claim of zero attempts and proposes first.
        outcomes = _run(task, tmp_path, peers=peers, faults={bad: PeerFault(fault)}, clock=lambda: 1_800_000_000_000)
    good = [o for o in outcomes if o.rank != bad]
    assert [o.error for o in good] == [None] * len(good)
    assert len({o.head for o in good}) == 1 and {o.height for o in good} == {ROUNDS}
    # The honest chain trains the same model as a run without the Byzantine peer.
    assert {o.model_hash for o in good} == {honest[1][0].model_hash}
    for outcome in good:
        noticed = [e for e in outcome.events if e.kind == kind]
        assert len(noticed) >= ROUNDS, outcome.events  # every round, the fault is caught and logged
        assert all(reason in e.reason and e.rank == bad for e in noticed)
        verify_ledger(outcome.ledger)
        assert audit_ledger(outcome.ledger).attested == ROUNDS
        with Ledger.open(outcome.ledger) as ledger:
            assert ledger.forks == 0
            bad_key = peer_key(SEED, bad).public_key
            for block in ledger.iter_blocks(1):
                stored = json.loads(ledger.get_attestations(block.hash, max_bytes=1 << 16))["attestations"]
                if fault is Fault.FORGE_ATTESTATION:
                    # Its (honest) block may win; its forged attestation is never stored.
                    assert len(stored) == peers - 1 and bad_key not in {a["peer"] for a in stored}
                else:
                    assert block.header.miner != bad_key
    assert any(reason in record.getMessage() for record in caplog.records)


def test_equivocation_is_also_caught_by_the_peer_that_got_the_other_block(task, tmp_path):
    outcomes = _run(task, tmp_path, peers=3, faults={2: PeerFault("equivocate")}, clock=lambda: 1_800_000_000_000)
    refused = [e.reason for e in outcomes[1].events if e.kind == "rejected"]
    assert refused and all("announced candidate" in r and "(equivocation)" in r for r in refused)


def test_half_the_peers_colluding_cannot_commit_a_wrong_model(task, tmp_path):
    faults = {2: PeerFault("wrong_model", coalition={3}), 3: PeerFault("wrong_model", coalition={2})}
    # A fixed clock fixes every nonce: with the system clock an honest peer's nonce is 0 in one
    # round of 256, and that peer then ties with the faulty ones for the first proposal.
    outcomes = _run(task, tmp_path, peers=4, faults=faults, clock=lambda: 1_800_000_000_000)
    for outcome in outcomes[:2]:
        assert isinstance(outcome.error, ConsensusError) and outcome.error.code == "no_majority"
        assert "no majority: round 1" in str(outcome.error)
        assert outcome.height == 0  # nothing committed: no fork, no wrong model
        rejected = [e.reason for e in outcome.rejections()]
        assert sum("its model is not the aggregate" in r for r in rejected) == 2
        failed = [e for e in outcome.events if e.kind == "no_majority"]
        # Every peer proposed once: the two that claimed zero attempts first.
        assert [e.rank for e in failed][:2] == [2, 3] and sorted(e.rank for e in failed) == [0, 1, 2, 3]
        verify_ledger(outcome.ledger)
    assert outcomes[0].head == outcomes[1].head


def test_an_honest_peer_outvoted_by_a_colluding_majority_stops_rather_than_follow(task, tmp_path):
    faults = {rank: PeerFault("wrong_model", coalition={1, 2, 3} - {rank}) for rank in (1, 2, 3)}
    outcomes = _run(task, tmp_path, peers=4, faults=faults, clock=lambda: 1_800_000_000_000)
    honest = outcomes[0]
    assert isinstance(honest.error, ConsensusError) and honest.error.code == "outvoted"
    assert "which this peer refuses" in str(honest.error) and "not the aggregate" in str(honest.error)
    assert honest.height == 0
    verify_ledger(honest.ledger)


def test_a_dead_peer_is_named_and_every_ledger_stays_whole(task, tmp_path, monkeypatch):
    original = Peer._train

    def dies_in_round_2(self, round, base_hash, clients):
        if self.rank == 1 and round == 2:
            self.transport.close()  # its process is gone: the others notice at once
        return original(self, round, base_hash, clients)

    monkeypatch.setattr(Peer, "_train", dies_in_round_2)
    outcomes = _run(task, tmp_path, peers=3)
    for outcome in (outcomes[0], outcomes[2]):
        assert isinstance(outcome.error, TransportError)
        assert outcome.error.rank == 1 and "rank 1" in str(outcome.error)
    assert {o.height for o in outcomes} == {1}
    assert len({o.head for o in outcomes}) == 1
    for outcome in outcomes:
        verify_ledger(outcome.ledger)
        assert audit_ledger(outcome.ledger).attested == 1


@pytest.fixture
def ledger_copy(honest, tmp_path) -> Path:
    copy = tmp_path / "ledger"
    shutil.copytree(honest[1][0].ledger, copy)
    (copy / ".lock").unlink(missing_ok=True)
    return copy


def _attestation_file(ledger: Path, height: int) -> Path:
    with Ledger.open(ledger) as opened:
        return ledger / ATTESTATIONS_DIR / f"{opened.block(height).hash}.json"


def test_audit_fails_when_an_attestation_set_is_deleted(ledger_copy):
    _attestation_file(ledger_copy, 2).unlink()
    verify_ledger(ledger_copy)  # the chain itself is intact
    with pytest.raises(AttestationError, match="no attestations are stored.*no strict majority") as info:
        audit_ledger(ledger_copy)
    assert info.value.block.startswith("00000002-")


def test_audit_fails_on_a_forged_attestation_signature(ledger_copy):
    path = _attestation_file(ledger_copy, 1)
    stored = json.loads(path.read_bytes())
    stored["attestations"][1]["signature"] = peer_key(SEED, 0).sign(b"something else")
    path.write_bytes(canonical_json(stored))
    with pytest.raises(AttestationError, match="entry 1: signature does not match peer") as info:
        audit_ledger(ledger_copy)
    assert info.value.block.startswith("00000001-")


def test_audit_fails_when_only_a_minority_accepted(ledger_copy):
    path = _attestation_file(ledger_copy, 1)
    stored = json.loads(path.read_bytes())
    stored["attestations"] = stored["attestations"][:1]  # genuine, but one peer of three
    path.write_bytes(canonical_json(stored))
    with pytest.raises(AttestationError, match=r"only 1 of the 3 peers accepted the block.*strict majority \(2\)") as info:
        audit_ledger(ledger_copy)
    assert (info.value.accepts, info.value.peers) == (1, 3)


def test_audit_refuses_an_attestation_of_a_non_peer_or_a_rejection_posing_as_support(ledger_copy):
    path = _attestation_file(ledger_copy, 1)
    stored = json.loads(path.read_bytes())
    block_hash = stored["block_hash"]
    # Two of the three accepts replaced by genuinely signed rejections: no majority.
    entries = []
    for entry in stored["attestations"]:
        rank = next(k for k in range(3) if peer_key(SEED, k).public_key == entry["peer"])
        verdict = "accept" if rank == 0 else "reject"
        entries.append(
            Attestation(peer=entry["peer"], height=1, block_hash=block_hash, verdict=verdict, reason="" if rank == 0 else "no")
            .signed(peer_key(SEED, rank)).to_dict()
        )
    stored["attestations"] = entries
    path.write_bytes(canonical_json(stored))
    with pytest.raises(AttestationError, match="only 1 of the 3 peers"):
        audit_ledger(ledger_copy)


def test_unsupported_settings_are_refused_before_anything_is_written(task, tmp_path):
    from torchchain.attacks import Replay

    replay = Replay()
    replay.setup(num_clients=CLIENTS, num_byzantine=1)
    with pytest.raises(ConfigError, match="Replay forges transactions .* a run of peers does not have"):
        _run(task, tmp_path, byzantine=1, attack=replay)
    with pytest.raises(ConfigError, match="peers must be a positive integer"):
        _run(task, tmp_path, peers=0)
    with pytest.raises(ConfigError, match="ranks \\[5\\]"):
        _run(task, tmp_path, faults={5: PeerFault("withhold")})
    with pytest.raises(ConfigError, match="unknown peer fault"):
        PeerFault("sleepy")
    assert not any(tmp_path.rglob("blocks"))


def test_a_run_configured_with_runtime_peers_runs_the_peers(honest, tmp_path):
    summary = run(
        compose_config([*FAST, "clients=4", "rounds=2", "model=linear", "strategy=median", "runtime.peers=3"]), tmp_path
    )
    assert summary["peers"] == 3 and summary["blocks"] == ROUNDS + 1
    assert len(set(summary["heads"])) == 1 and summary["head"] == summary["heads"][0]
    assert summary["model_hash"] == honest[1][0].model_hash
    assert json.loads((tmp_path / "summary.json").read_text())["head"] == summary["head"]
    assert audit_ledger(tmp_path / "rank1" / "ledger").attested == ROUNDS


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("runtime.peers=0", "runtime.peers must be an integer in \\[1, 256\\]"),
        ("runtime.peers=true", "runtime.peers must be an integer"),
        ("runtime.kind=cluster", "runtime.kind must be simulation or distributed"),
        ("runtime.timeout=0", "runtime.timeout must be a number of seconds"),
    ],
)
def test_bad_peer_settings_fail_before_anything_is_written(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        run(compose_config([*FAST, "runtime.peers=3", override]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_peer_code_never_unpickles_what_another_peer_sent():
    import re

    import torchchain.protocol.attestation as attestation
    import torchchain.protocol.bundle as bundle
    import torchchain.runtime.peer as peer
    import torchchain.runtime.peer_behaviour as behaviour

    for module in (peer, behaviour, bundle, attestation):
        source = Path(module.__file__).read_text()
        assert not re.search(r"(all_gather|gather|broadcast|scatter|send|recv)_object", source), module.__name__
        assert "pickle" not in source and "torch.load" not in source, module.__name__
