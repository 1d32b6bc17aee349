"""validation=vote: peers score every update on their own held-out data, sign ballots, and an
update enters a block only with approvals from a strict majority of them; the audit recounts."""

from __future__ import annotations

import json
import shutil

import pytest

from composing import FAST, compose_config
from torchchain.chain.encoding import canonical_json
from torchchain.chain.ledger import BLOCKS_DIR, VOTES_DIR, Ledger
from torchchain.errors import ConfigError
from torchchain.experiment import run
from torchchain.protocol.audit import VoteError, audit_ledger
from torchchain.protocol.vote import Ballot
from torchchain.runtime.peer import peer_key
from torchchain.runtime.seeding import client_key

VOTING = [*FAST, "model=linear", "rounds=2", "runtime.peers=3", "clients=6", "validation=vote", "strategy=fedavg"]


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("votes")
    summary = run(compose_config([*VOTING, "attack=signflip", "byzantine=2"]), run_dir)
    return run_dir, summary


def test_sign_flipped_updates_are_voted_out_and_the_audit_recounts_the_votes(attacked):
    run_dir, summary = attacked
    assert len(set(summary["heads"])) == 1
    malicious = {client_key(0, i).public_key for i in summary["byzantine"]}
    assert len(malicious) == 2 and summary["voted_out"] == 2 * 2  # both, in both rounds
    with Ledger.open(run_dir / "rank0" / "ledger") as ledger:
        for block in ledger.iter_blocks(1):
            assert len(block.transactions) == 4 and not {tx.client for tx in block.transactions} & malicious
    for k in range(3):
        report = audit_ledger(run_dir / f"rank{k}" / "ledger")
        assert report.voted == 2 and "votes OK" in report.summary()
    # The votes are a filter in front of FedAvg: without them the same attack drags it down.
    unprotected = run(compose_config([*VOTING, "attack=signflip", "byzantine=2", "validation=none"]), run_dir.parent / "plain")
    assert summary["final_accuracy"] > unprotected["final_accuracy"] + 0.2


@pytest.fixture
def ledger_copy(attacked, tmp_path):
    copy = tmp_path / "ledger"
    shutil.copytree(attacked[0] / "rank1" / "ledger", copy)
    (copy / ".lock").unlink(missing_ok=True)
    return copy


def _votes_file(ledger, height: int):
    with Ledger.open(ledger) as opened:
        return ledger / VOTES_DIR / f"{opened.block(height).hash}.json"


def test_audit_fails_when_a_blocks_votes_are_deleted(ledger_copy):
    _votes_file(ledger_copy, 2).unlink()
    with pytest.raises(VoteError, match="no votes are stored") as info:
        audit_ledger(ledger_copy)
    assert info.value.block.startswith("00000002-")


def test_audit_fails_when_an_update_lacks_a_majority_of_approvals(ledger_copy):
    path = _votes_file(ledger_copy, 1)
    stored = json.loads(path.read_bytes())
    stored["ballots"] = stored["ballots"][:1]  # genuine, but one peer of three
    path.write_bytes(canonical_json(stored))
    with pytest.raises(VoteError, match="without approvals from a strict majority of the 3 peers"):
        audit_ledger(ledger_copy)


def test_audit_fails_on_a_forged_ballot(ledger_copy):
    path = _votes_file(ledger_copy, 1)
    stored = json.loads(path.read_bytes())
    # Peer 0's key signs a ballot that names peer 1: the signature does not match.
    entry = stored["ballots"][1]
    forged = Ballot(peer=entry["peer"], height=1, base_hash=entry["base_hash"], approve=tuple(entry["approve"]))
    entry["signature"] = peer_key(0, 0).sign(forged.signing_payload())
    entry["reject"] = []
    path.write_bytes(canonical_json(stored))
    with pytest.raises(VoteError, match="signature does not match peer"):
        audit_ledger(ledger_copy)


def test_a_peer_behind_after_a_restart_fetches_the_block_with_its_votes(tmp_path):
    overrides = [*VOTING, "attack=signflip", "byzantine=2"]
    first = run(compose_config(overrides), tmp_path)
    next((tmp_path / "rank2" / "ledger" / BLOCKS_DIR).glob("00000002-*.json")).unlink()
    (tmp_path / "rank2" / "ledger" / VOTES_DIR / f"{first['head']}.json").unlink()
    resumed = run(compose_config([f"resume={tmp_path}"]), tmp_path / "unused", overrides=[f"resume={tmp_path}"])
    assert resumed["heads"] == [first["head"]] * 3
    assert audit_ledger(tmp_path / "rank2" / "ledger").voted == 2


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["runtime.peers=1"], "validation=vote needs a run of peers"),
        (["validation.threshold=-1"], "validation.threshold must be a number in \\[0, 1e\\+06\\]"),
        (["validation.kind=poll"], "validation.kind must be none or vote"),
    ],
)
def test_bad_validation_settings_fail_before_anything_is_written(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        run(compose_config([*VOTING, *overrides]), tmp_path / "run")
    assert not (tmp_path / "run").exists()
