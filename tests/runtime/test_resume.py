"""A stopped run resumes from its last whole block and ends exactly where an unstopped run ends."""

from __future__ import annotations

import pytest

from torchchain.protocol.audit import audit_ledger
from torchchain.chain.ledger import Ledger
from torchchain.chain.verify import verify_ledger
from torchchain.experiment import run
from torchchain.runtime.node import Node

from composing import FAST, compose_config, run_stopped_before

# A stateful strategy, client momentum and an attack: everything a checkpoint must carry.
SETTINGS = [*FAST, "rounds=5", "clients=6", "strategy=centered_clipping", "momentum=0.9", "lr=0.05", "attack=signflip"]


class Stop(Exception):
    """Stands in for the process dying."""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return run(compose_config(SETTINGS), tmp_path_factory.mktemp("unstopped"))


def _resume(run_dir):
    return run(compose_config([*FAST, f"resume={run_dir}"]), run_dir / "unused")


def test_stop_between_rounds_then_resume(tmp_path, monkeypatch, reference):
    run_stopped_before(3, SETTINGS, tmp_path, monkeypatch)
    assert Ledger.open(tmp_path / "ledger").height == 2
    resumed = _resume(tmp_path)
    assert resumed["model_hash"] == reference["model_hash"]
    assert verify_ledger(tmp_path / "ledger").height == 5
    # The replay from the ledger alone agrees: the restored strategy state was exact.
    assert len(audit_ledger(tmp_path / "ledger").rounds) == 5


def test_stop_after_checkpoint_before_block_then_resume(tmp_path, monkeypatch, reference):
    original = Node.commit

    lost = []

    def commit(self, outcome):
        if outcome.block.header.round == 4:
            lost.append(outcome.block.hash)
            raise Stop
        return original(self, outcome)

    monkeypatch.setattr(Node, "commit", commit)
    with pytest.raises(Stop):
        run(compose_config(SETTINGS), tmp_path)
    # The checkpoint of the block that never reached the ledger is on disk, keyed by its hash;
    # the ledger's head is block 3, whose checkpoint is kept beside it.
    ledger = Ledger.open(tmp_path / "ledger")
    assert ledger.height == 3
    assert (tmp_path / "checkpoints" / f"block_{lost[0]}.safetensors").exists()
    assert (tmp_path / "checkpoints" / f"block_{ledger.head_hash}.safetensors").exists()
    monkeypatch.setattr(Node, "commit", original)
    assert _resume(tmp_path)["model_hash"] == reference["model_hash"]


def test_resuming_a_finished_run_does_nothing(tmp_path, capsys):
    first = run(compose_config([*FAST, "rounds=2"]), tmp_path)
    files = sorted(p.name for p in (tmp_path / "ledger" / "blocks").iterdir())
    again = _resume(tmp_path)
    assert "already finished" in capsys.readouterr().out
    assert again["head"] == first["head"]
    assert sorted(p.name for p in (tmp_path / "ledger" / "blocks").iterdir()) == files


def test_resume_needs_a_run_folder(tmp_path):
    from torchchain.errors import ConfigError

    with pytest.raises(ConfigError, match="config.yaml"):
        _resume(tmp_path)


def test_killed_after_the_last_block_but_before_the_summary(tmp_path):
    first = run(compose_config([*FAST, "rounds=2"]), tmp_path)
    (tmp_path / "summary.json").unlink()
    resumed = _resume(tmp_path)
    assert resumed["model_hash"] == first["model_hash"]
    assert resumed["final_accuracy"] == first["final_accuracy"]
    assert (tmp_path / "summary.json").is_file()
    assert Ledger.open(tmp_path / "ledger").height == 2
