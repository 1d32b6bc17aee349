"""The ``torchchain`` command: verify, audit and inspect, their output and exit statuses."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchchain.chain.block import Transaction, make_block, make_genesis
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.ledger import Ledger, block_file_name
from torchchain.cli import main
from torchchain.protocol.randomness import round_randomness
from torchchain.protocol.record import Rejections, RoundRecord
from torchchain.protocol.round import RoundRules
from torchchain.runtime.node import Node, Submission
from torchchain.strategies import FedAvg, Median
from torchchain.updates.serialize import update_to_bytes

ROOT = Path(__file__).resolve().parents[1]
KEYS = [SigningKey.from_seed_material(f"cli-test/client/{i}") for i in range(4)]
MINER = SigningKey.from_seed_material("cli-test/miner")
SEED = 3


def _build(path: Path, *, recorded: str, used) -> Ledger:
    """Two rounds mined by a Node aggregating with ``used``; the genesis config records ``recorded``.

    In round 1 the last client's transaction is altered after signing, so the node rejects it.
    """
    state = {"fc.weight": torch.linspace(-1.0, 1.0, 6).reshape(2, 3), "fc.bias": torch.zeros(2)}
    model = update_to_bytes(state)
    genesis = make_genesis(
        members=[k.public_key for k in KEYS],
        config={
            "seed": SEED, "clients": 4, "byzantine": 1, "chain": {"max_update_mb": 1},
            "strategy": {"_target_": recorded, "f": None, "pre": []},
        },
        model_hash=sha256_hex(model),
        miner=MINER,
        difficulty=4,
        time_ms=1_700_000_000_000,
    )
    ledger = Ledger.create(path, genesis, blobs=[model])
    used.setup(num_clients=4, num_byzantine=1)
    # A dishonest node can aggregate with another rule than the one its genesis block records.
    rules = RoundRules(
        strategy=used, members=frozenset(k.public_key for k in KEYS), max_update_bytes=1 << 20,
        config_hash=genesis.header.config_hash,
    )
    node = Node(ledger=ledger, rules=rules, key=MINER, difficulty=4)
    for rnd in (1, 2):
        subs = []
        for i, key in enumerate(KEYS):
            g = torch.Generator().manual_seed(10 * rnd + i)
            payload = update_to_bytes({"fc.weight": torch.randn(2, 3, generator=g), "fc.bias": torch.randn(2, generator=g)})
            tx = Transaction(
                client=key.public_key, round=rnd, base_hash=ledger.head.hash, update_hash=sha256_hex(payload), num_samples=10 + i
            ).signed(key)
            if rnd == 1 and i == 3:
                tx = dataclasses.replace(tx, num_samples=1000)
            subs.append(Submission(tx, payload))
        outcome = node.mine_round(rnd, subs, state, time_ms=1_700_000_000_000 + rnd)
        state = outcome.model
    return ledger


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Ledger:
    return _build(tmp_path_factory.mktemp("good") / "ledger", recorded="torchchain.strategies.Median", used=Median())


@pytest.fixture(scope="module")
def dishonest(tmp_path_factory) -> Ledger:
    # Records Median in the genesis block, but the node averaged: only a replay can tell.
    return _build(tmp_path_factory.mktemp("dishonest") / "ledger", recorded="torchchain.strategies.Median", used=FedAvg())


# -- verify and audit ---------------------------------------------------------------------------


def test_verify_passes_both_ledgers(good, dishonest, capsys):
    assert main(["verify", str(good.path)]) == 0
    assert main(["verify", str(dishonest.path)]) == 0
    assert capsys.readouterr().out.count("ledger OK") == 2


def test_audit_prints_one_row_per_round_and_exits_0(good, capsys):
    assert main(["audit", str(good.path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\s+\d+\s+[0-9a-f]{12}\s", line)]
    assert len(rows) == 2
    block1 = good.blocks()[1]
    trusted = sum(1 for w in block1.meta["trust"].values() if w > 0)
    assert re.match(rf"\s+1\s+{block1.hash[:12]}\s+3\s+1\s+{trusted}/3\s+match {block1.header.model_hash[:12]}$", rows[0])
    assert re.match(r"\s+2\s+[0-9a-f]{12}\s+4\s+0\s+\d/4\s+match ", rows[1])
    assert "ledger OK" in out and "audit OK: 2 rounds replayed with torchchain.strategies.Median" in out


def test_audit_of_a_dishonest_node_exits_1_naming_round_1(dishonest, capsys):
    assert main(["audit", str(dishonest.path)]) == 1
    captured = capsys.readouterr()
    assert "MISMATCH" in captured.out
    assert captured.err.startswith("torchchain audit: FAILED: block ")
    assert block_file_name(dishonest.blocks()[1]) in captured.err
    assert "round 1" in captured.err


def test_audit_of_a_folder_that_is_no_ledger_exits_1(tmp_path, capsys):
    assert main(["audit", str(tmp_path)]) == 1
    assert "not a ledger folder" in capsys.readouterr().err


# -- inspect ------------------------------------------------------------------------------------


def test_inspect_prints_the_summary(good, capsys):
    assert main(["inspect", str(good.path)]) == 0
    out = capsys.readouterr().out
    head = good.blocks()[-1]
    assert f"height     2 (3 blocks), head {head.hash}" in out
    assert f"model      {head.header.model_hash}" in out
    assert "difficulty 4 bits, 4 members" in out
    assert "torchchain.strategies.Median(f=None, pre=[])" in out
    assert "7 accepted, 1 rejected" in out
    assert re.search(rf"^\s+2\s+{head.hash[:12]}\s", out, re.MULTILINE)


def test_inspect_json_has_height_head_and_model_hash(good, capsys):
    assert main(["inspect", str(good.path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    head = good.blocks()[-1]
    assert (summary["height"], summary["head"], summary["model_hash"]) == (2, head.hash, head.header.model_hash)
    assert [(r["round"], r["accepted"], r["rejected"]) for r in summary["rounds"]] == [(1, 3, 1), (2, 4, 0)]
    assert summary["members"] == 4 and summary["strategy"]["_target_"] == "torchchain.strategies.Median"
    assert "block" not in summary


def test_inspect_block_shows_contributions_and_rejections(good, capsys):
    assert main(["inspect", str(good.path), "--block", "1"]) == 0
    out = capsys.readouterr().out
    block = good.blocks()[1]
    assert f"block 1  {block.hash}" in out
    assert f"model_hash   {block.header.model_hash}" in out
    for tx in block.transactions:
        assert re.search(rf"^\s+{tx.client[:12]}\s+{tx.num_samples}\s+{tx.update_hash[:12]}\s+{block.meta['trust'][tx.client]:.4f}$", out, re.MULTILINE)
    assert "rejected (1: bad_signature 1; 1 listed):" in out and "bad_signature: signature does not match" in out


def test_inspect_block_json(good, capsys):
    assert main(["inspect", str(good.path), "--block", "1", "--json"]) == 0
    details = json.loads(capsys.readouterr().out)["block"]
    block = good.blocks()[1]
    assert details["hash"] == block.hash and details["header"]["round"] == 1
    assert {tx["client"]: tx["trust"] for tx in details["transactions"]} == block.meta["trust"]
    assert [r["code"] for r in details["rejected"]] == ["bad_signature"]
    assert details["rejected"][0]["client"] == KEYS[3].public_key


def test_inspect_genesis_block_lists_the_members(good, capsys):
    assert main(["inspect", str(good.path), "--block", "0"]) == 0
    out = capsys.readouterr().out
    assert "members (4):" in out
    assert all(k.public_key in out for k in KEYS)


@pytest.mark.parametrize("height", ["3", "-1"])
def test_inspect_block_out_of_range_exits_1(good, capsys, height):
    assert main(["inspect", str(good.path), "--block", height]) == 1
    err = capsys.readouterr().err
    assert f"no block at height {height}" in err and "heights 0 to 2" in err


def test_inspect_escapes_control_characters_from_the_ledger(tmp_path, good, capsys):
    ledger = Ledger.create(tmp_path / "ledger", good.genesis, blobs=[good.get_blob(good.genesis.header.model_hash)])
    rejected = {"client": KEYS[0].public_key, "update_hash": "ab" * 32, "code": "odd", "reason": "clear\x1b[2Jscreen"}
    record = RoundRecord(
        outcome="aggregated", trust={}, rejected=Rejections(total=1, counts={"odd": 1}, sample=(rejected,)),
        randomness=round_randomness(ledger.genesis.header.config_hash, 1, []),
    )
    block = make_block(
        prev=ledger.head, round=1, transactions=[], meta=record.to_meta(),
        model_hash=ledger.head.header.model_hash, miner=MINER, difficulty=4, time_ms=1_700_000_000_001,
    )
    ledger.append(block)
    assert main(["inspect", str(ledger.path), "--block", "1"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "clear\\x1b[2Jscreen" in out


@pytest.mark.parametrize(
    "argv",
    [[], ["audit"], ["inspect"], ["inspect", "x", "--block", "one"], ["replay", "x"]],
    ids=["no-command", "audit-no-ledger", "inspect-no-ledger", "block-not-an-int", "unknown-command"],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "usage: torchchain" in capsys.readouterr().err


# -- as a program -------------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_python_m_torchchain_cli_audits_end_to_end(good, dishonest):
    ok = _run(sys.executable, "-m", "torchchain.cli", "audit", str(good.path))
    assert ok.returncode == 0, ok.stderr
    assert "audit OK" in ok.stdout
    bad = _run(sys.executable, "-m", "torchchain.cli", "audit", str(dishonest.path))
    assert bad.returncode == 1
    assert "round 1" in bad.stderr and "Traceback" not in bad.stderr


def test_console_script_inspects(good):
    script = Path(sys.executable).parent / "torchchain"
    if not script.exists():
        pytest.skip("the torchchain console script is not installed next to this Python")
    result = _run(str(script), "inspect", str(good.path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["head"] == good.blocks()[-1].hash
