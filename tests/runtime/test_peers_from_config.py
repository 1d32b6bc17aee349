"""Runs of peers configured as a user configures them (``python train.py runtime.peers=N ...``):
faulty peers from the config, client attacks living on the peers that own the clients."""

from __future__ import annotations

import json

import pytest

from composing import FAST, compose_config
from torchchain.errors import ConfigError
from torchchain.experiment import run
from torchchain.protocol.audit import audit_ledger
from torchchain.runtime.peer import ConsensusError

PEERS = [*FAST, "model=linear", "rounds=2", "runtime.peers=3"]


def _heads(run_dir, peers: int = 3) -> set[str]:
    return {audit_ledger(run_dir / f"rank{k}" / "ledger").head for k in range(peers)}


def test_a_faulty_peer_from_the_config_is_outvoted_and_named(tmp_path):
    summary = run(compose_config([*PEERS, "clients=4", "runtime.byzantine_peers=1", "runtime.peer_fault=drop_tx"]), tmp_path)
    assert summary["byzantine_peers"] == [2] and summary["peer_fault"] == "drop_tx"
    # The faulty rank claims zero attempts and proposes first (unless an honest nonce is 0 too,
    # one round in 256, and the lower honest rank goes first); every honest peer refuses it.
    assert summary["rejected_proposals"] >= 1
    assert len(set(summary["heads"])) == 1
    honest = run(compose_config([*PEERS, "clients=4"]), tmp_path / "honest")
    assert summary["model_hash"] == honest["model_hash"]


def test_half_the_peers_faulty_stop_the_run_without_a_fork(tmp_path, capsys):
    with pytest.raises(ConsensusError, match="no majority: round 1"):
        run(compose_config([*FAST, "model=linear", "rounds=1", "clients=4", "runtime.peers=4", "runtime.byzantine_peers=2"]), tmp_path)
    assert "the honest peers are no strict majority" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["runtime.byzantine_peers=-1"], "runtime.byzantine_peers must be a count of faulty peers >= 0"),
        (["runtime.byzantine_peers=3"], "runtime.byzantine_peers=3 of runtime.peers=3: at least one peer must be honest"),
        (["runtime.peer_fault=sleepy"], "runtime.peer_fault must be one of bad_nonce, wrong_model"),
        (["runtime.peers=1", "runtime.byzantine_peers=1"], "runtime.byzantine_peers=1 needs a run of peers"),
        (["runtime.byzantine_peers=1", "runtime.peer_fault=bad_nonce", "chain.difficulty=0"], "bad_nonce needs chain.difficulty > 0"),
        (["attack=replay"], "Replay forges transactions"),
        (["attack=sybil"], "Sybil forges transactions"),
    ],
)
def test_bad_peer_fault_settings_fail_before_anything_is_written(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        run(compose_config([*PEERS, "clients=4", *overrides]), tmp_path / "run")
    assert not any((tmp_path / "run").rglob("blocks"))


def test_malicious_clients_attack_from_the_peers_that_own_them(tmp_path):
    overrides = ["clients=6", "attack=signflip", "byzantine=2", "strategy=median"]
    summary = run(compose_config([*PEERS, *overrides]), tmp_path / "peers")
    assert len(set(summary["heads"])) == 1 and summary["blocks"] == 3
    assert summary["byzantine"] and len(summary["byzantine"]) == 2
    for k in range(3):
        assert "attestations OK" in audit_ledger(tmp_path / "peers" / f"rank{k}" / "ledger").summary()
    # A non-omniscient attack sends what it sends in a one-node simulation: the same chain model.
    single = run(compose_config([*FAST, "model=linear", "rounds=2", *overrides]), tmp_path / "single")
    assert single["byzantine"] == summary["byzantine"]
    assert summary["model_hash"] == single["model_hash"]
    assert json.loads((tmp_path / "peers" / "summary.json").read_text())["head"] == summary["head"]


def test_rank_0_alone_writes_tensorboard_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = run(compose_config([*PEERS, "clients=4", "runtime.eval_every=2"]), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("eval/accuracy", "chain/height", "time/round_seconds", "time/consensus_seconds", "time/attest", "chain/bytes_sent"):
        assert tag in tags, tag
    assert [e.step for e in events.Scalars("chain/height")] == [1, 2]
    assert [e.step for e in events.Scalars("eval/accuracy")] == [2]  # every eval_every rounds
    assert events.Scalars("eval/accuracy")[-1].value == pytest.approx(summary["final_accuracy"])
    written = list(tmp_path.rglob("events.out.tfevents.*"))
    assert written and all((tmp_path / "tensorboard") in p.parents for p in written)
    lines = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2] and "time/consensus_seconds" in lines[0]
    assert list(tmp_path.rglob("rounds.jsonl")) == [tmp_path / "rounds.jsonl"]


def test_an_omniscient_attack_sees_only_its_own_peers_honest_clients(tmp_path):
    overrides = ["clients=6", "attack=alie", "byzantine=2", "strategy=trimmed_mean"]
    summary = run(compose_config([*PEERS, *overrides]), tmp_path / "peers")
    assert summary["byzantine"] == [0, 2]  # on peers 0 and 2, each beside one honest client
    assert len(set(summary["heads"])) == 1
    assert audit_ledger(tmp_path / "peers" / "rank0" / "ledger").attested == 2
    # In one node the attack sees all four honest updates, so it sends something else.
    single = run(compose_config([*FAST, "model=linear", "rounds=2", *overrides]), tmp_path / "single")
    assert summary["model_hash"] != single["model_hash"]


# -- resume --------------------------------------------------------------------------------------

T0 = 1_800_000_000_000  # a fixed clock: ledgers are then reproducible byte for byte


@pytest.fixture(scope="module")
def task():
    import torch

    from torchchain.data import load_digits
    from torchchain.models import LinearRegression
    from torchchain.runtime.client import LocalTraining
    from torchchain.runtime.simulation import SimulationSettings

    data = load_digits(test_fraction=0.2, seed=0)
    torch.manual_seed(0)
    model = LinearRegression(input_shape=list(data.input_shape), num_outputs=data.num_outputs)
    settings = SimulationSettings(
        clients=4, rounds=3, byzantine=0, seed=0, device=torch.device("cpu"), difficulty=8, progress=False,
        training=LocalTraining(epochs=1, batch_size=32, lr=0.3, momentum=0.5),  # momentum: state to carry over
    )
    config = {
        "seed": 0, "clients": 4, "byzantine": 0, "momentum": 0.5,
        "strategy": {"_target_": "torchchain.strategies.Median", "f": None, "pre": []},
        "chain": {"difficulty": 8, "max_update_mb": 64},
    }
    return data, model, settings, config


def _peers(task, run_dir, *, rounds: int, resume: bool = False):
    import dataclasses

    from torchchain.runtime.peer import run_in_process

    data, model, settings, config = task
    return run_in_process(
        data=data, model=model, settings=dataclasses.replace(settings, rounds=rounds), config=config, run_dir=run_dir,
        peers=3, timeout=30, clock=lambda: T0, resume=resume,
    )


@pytest.fixture(scope="module")
def uninterrupted(task, tmp_path_factory):
    outcomes = _peers(task, tmp_path_factory.mktemp("uninterrupted"), rounds=3)
    assert [o.error for o in outcomes] == [None] * 3
    return outcomes[0]


def test_peers_killed_in_a_round_resume_to_the_head_of_a_run_never_stopped(task, uninterrupted, tmp_path, monkeypatch):
    from torchchain.runtime.peer import Peer
    from torchchain.runtime.transport import TransportError

    original = Peer.run_round

    def killed_in_round_2(self, round):
        if self.rank == 1 and round == 2:
            self.transport.close()  # its process is gone; torchrun stops the others
        return original(self, round)

    monkeypatch.setattr(Peer, "run_round", killed_in_round_2)
    stopped = _peers(task, tmp_path, rounds=3)
    assert all(isinstance(o.error, TransportError) for o in (stopped[0], stopped[2]))
    assert {o.height for o in stopped} == {1}
    monkeypatch.setattr(Peer, "run_round", original)

    resumed = _peers(task, tmp_path, rounds=3, resume=True)
    assert [o.error for o in resumed] == [None] * 3
    assert {o.head for o in resumed} == {uninterrupted.head}
    assert [len(o.stats) for o in resumed] == [2, 2, 2]  # rounds 2 and 3 only
    for k in range(3):
        assert audit_ledger(tmp_path / f"rank{k}" / "ledger").attested == 3


def test_a_peer_killed_before_writing_the_block_the_others_committed_fetches_and_checks_it(task, uninterrupted, tmp_path):
    from torchchain.chain.ledger import BLOCKS_DIR

    first = _peers(task, tmp_path, rounds=2)
    assert {o.height for o in first} == {2}
    # Rank 2 died after the attestations were counted, before its checkpoint and block were written.
    block_2 = next((tmp_path / "rank2" / "ledger" / BLOCKS_DIR).glob("00000002-*.json"))
    block_2.unlink()
    (tmp_path / "rank2" / "checkpoints" / f"block_{first[2].head}.safetensors").unlink()

    resumed = _peers(task, tmp_path, rounds=3, resume=True)
    assert [o.error for o in resumed] == [None] * 3
    fetched = [e for e in resumed[2].events if e.kind == "fetched"]
    assert len(fetched) == 1 and "height 2 from rank 0, checked" in fetched[0].reason
    # Its clients' momentum was rebuilt by training round 2 again: round 3 is the same as in a run never stopped.
    assert {o.head for o in resumed} == {uninterrupted.head}
    assert audit_ledger(tmp_path / "rank2" / "ledger").attested == 3


def test_resume_refuses_peers_whose_ledgers_start_from_different_genesis_blocks(task, tmp_path):
    import dataclasses
    import shutil

    from torchchain.runtime.peer import run_in_process

    _peers(task, tmp_path / "run", rounds=1)
    data, model, settings, config = task
    run_in_process(  # the same config, started a millisecond later: another genesis block
        data=data, model=model, settings=dataclasses.replace(settings, rounds=1), config=config, run_dir=tmp_path / "other",
        peers=3, timeout=30, clock=lambda: T0 + 1,
    )
    shutil.rmtree(tmp_path / "run" / "rank2")
    shutil.copytree(tmp_path / "other" / "rank2", tmp_path / "run" / "rank2")
    outcomes = _peers(task, tmp_path / "run", rounds=2, resume=True)
    for outcome in outcomes:
        assert isinstance(outcome.error, ConsensusError) and outcome.error.code == "resume"
        assert "different genesis blocks" in str(outcome.error) and "rank 2: height 1" in str(outcome.error)
        assert outcome.height == 1  # nothing written


def test_resume_refuses_when_only_some_peers_hold_a_ledger(task, tmp_path):
    import shutil

    _peers(task, tmp_path, rounds=1)
    shutil.rmtree(tmp_path / "rank1")
    with pytest.raises(ConfigError, match=r"rank\(s\) 1 hold no ledger"):
        _peers(task, tmp_path, rounds=2, resume=True)


def test_python_train_resume_continues_a_run_of_peers(tmp_path, monkeypatch):
    from composing import Stopped
    from torchchain.runtime.peer import Peer

    overrides = [*PEERS, "clients=4", "rounds=3", "momentum=0.5"]
    reference = run(compose_config(overrides), tmp_path / "reference")
    original = Peer.run_round

    def stops_in_round_3(self, round):
        if round == 3:
            raise Stopped  # every process dies
        return original(self, round)

    monkeypatch.setattr(Peer, "run_round", stops_in_round_3)
    with pytest.raises(Stopped):
        run(compose_config(overrides), tmp_path / "run")
    monkeypatch.setattr(Peer, "run_round", original)
    summary = run(compose_config([f"resume={tmp_path / 'run'}"]), tmp_path / "unused", overrides=[f"resume={tmp_path / 'run'}"])
    assert summary["blocks"] == 4 and len(set(summary["heads"])) == 1
    assert summary["model_hash"] == reference["model_hash"]
