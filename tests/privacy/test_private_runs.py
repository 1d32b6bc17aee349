"""Differential privacy end to end: what a run spends is in the ledger, and audit recounts it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant

import hostile_helpers as h
from composing import FAST, compose_config
from torchchain.chain.block import make_block
from torchchain.chain.ledger import BLOCKS_DIR, Ledger, block_file_name
from torchchain.errors import ConfigError
from torchchain.experiment import run
from torchchain.protocol.audit import audit_ledger
from torchchain.protocol.record import RoundRecord
from torchchain.protocol.round import ReplayMismatch

TINY = [*FAST, "clients=4", "rounds=3", "model=linear"]


def _run(tmp_path: Path, name: str, overrides: list[str]) -> dict:
    return run(compose_config([*TINY, *overrides]), tmp_path / name)


def _epsilons(ledger_path: Path) -> list[float]:
    with Ledger.open(ledger_path) as ledger:
        return [RoundRecord.from_block(b).epsilon for b in ledger.iter_blocks(1)]


def _opacus_epsilon(sigma: float, rate: float, steps: int, delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = [(sigma, rate, steps)]
    return accountant.get_epsilon(delta=delta)


@pytest.fixture(scope="module")
def client_dp_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("client_dp")
    run(compose_config([*TINY, "privacy=client_dp", "privacy.noise_multiplier=1.5", "privacy.noise_seed=7"]), folder)
    return folder


def test_client_dp_records_the_epsilon_opacus_gives_for_each_round(client_dp_run):
    # Every client takes part in every round: after round r each has released r noised updates
    # at q = 1 (participation on a ledger is public, so no amplification by sampling).
    recorded = _epsilons(client_dp_run / "ledger")
    expected = [_opacus_epsilon(1.5, 1.0, r, 1e-5) for r in (1, 2, 3)]
    assert recorded == pytest.approx(expected, rel=1e-12)
    summary = json.loads((client_dp_run / "summary.json").read_text())
    assert summary["privacy"]["epsilon"] == pytest.approx(expected[-1], rel=1e-12)
    assert summary["privacy"]["delta"] == 1e-5


def test_audit_recounts_the_privacy_loss(client_dp_run):
    report = audit_ledger(client_dp_run / "ledger")
    assert len(report.rounds) == 3


def test_audit_catches_an_edited_and_re_mined_epsilon(client_dp_run, tmp_path):
    # The enemy holds the miner's key: the block is validly mined and signed, only its ε lies.
    run_dir = h.copy_run(client_dp_run, tmp_path / "edited")
    ledger_path = run_dir / "ledger"
    with Ledger.open(ledger_path) as ledger:
        head = ledger.head
        parent = ledger.block(head.header.height - 1)
    meta = dict(head.meta)
    meta["privacy"] = {"epsilon": meta["privacy"]["epsilon"] / 10}
    node_key, _ = h.run_keys(0, 4)
    forged = make_block(
        prev=parent, round=head.header.round, transactions=list(head.transactions), meta=meta,
        model_hash=head.header.model_hash, miner=node_key, difficulty=head.header.difficulty,
        time_ms=head.header.time_ms,
    )
    (ledger_path / BLOCKS_DIR / block_file_name(head)).unlink()
    h.plant_block(ledger_path, forged)
    (run_dir / "summary.json").unlink()
    with pytest.raises(ReplayMismatch, match="privacy loss epsilon"):
        audit_ledger(ledger_path)


def test_the_noise_seed_is_local_and_the_noise_is_private(client_dp_run, tmp_path):
    with Ledger.open(client_dp_run / "ledger") as ledger:
        recorded = ledger.genesis_info.config["privacy"]
    assert "noise_seed" not in recorded
    # Same public seed, no local noise seed: fresh noise, so the models differ.
    first = _run(tmp_path, "a", ["privacy=client_dp"])
    second = _run(tmp_path, "b", ["privacy=client_dp"])
    assert first["model_hash"] != second["model_hash"]
    # The same local noise seed reproduces the run.
    again = _run(tmp_path, "c", ["privacy=client_dp", "privacy.noise_multiplier=1.5", "privacy.noise_seed=7"])
    assert again["model_hash"] == json.loads((client_dp_run / "summary.json").read_text())["model_hash"]


def test_a_plan_beyond_the_target_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"planned 3 rounds would spend up to epsilon=\d"):
        _run(tmp_path, "refused", ["privacy=client_dp", "privacy.target_epsilon=1"])
    assert not (tmp_path / "refused" / "ledger").exists()


def test_a_run_stops_at_the_last_round_within_the_budget(tmp_path, monkeypatch):
    # 2 of 4 clients per round over 6 rounds: the plan counts 3 updates per client, but the
    # chain-derived sample (fixed by the config hash and the round) gives some client a 4th. The
    # run stops before the round that would pass the budget and says so.
    target = _opacus_epsilon(1.0, 1.0, 3, 1e-5) + 1e-6
    summary = _run(
        tmp_path, "stopped",
        ["privacy=client_dp", "privacy.noise_seed=1", f"privacy.target_epsilon={target}", "clients_per_round=2", "rounds=6"],
    )
    stopped = summary["privacy"]["stopped_at_round"]
    assert stopped is not None and 2 <= stopped <= 6
    epsilons = _epsilons(tmp_path / "stopped" / "ledger")
    assert len(epsilons) == stopped - 1
    assert max(epsilons) <= target
    audit_ledger(tmp_path / "stopped" / "ledger")


def test_dpsgd_run_accounts_each_clients_local_steps(tmp_path):
    summary = _run(tmp_path, "dpsgd", ["privacy=dpsgd", "privacy.noise_seed=3", "batch_size=64"])
    with Ledger.open(tmp_path / "dpsgd" / "ledger") as ledger:
        sizes = {tx.num_samples for tx in ledger.block(1).transactions}
    # The smallest client has the largest sampling rate and the most steps: its ε is the chain's.
    n = min(sizes)
    steps = -(-n // 64)
    expected = _opacus_epsilon(1.0, min(1.0, 64 / n), 3 * steps, 1e-5)
    assert summary["privacy"]["epsilon"] == pytest.approx(expected, rel=1e-12)
    audit_ledger(tmp_path / "dpsgd" / "ledger")


def test_dpsgd_refuses_the_batched_executor(tmp_path):
    with pytest.raises(ConfigError, match="runtime.executor=batched"):
        _run(tmp_path, "batched", ["privacy=dpsgd", "runtime.executor=batched"])


def test_dpsgd_refuses_a_model_opacus_cannot_train_before_the_ledger(tmp_path, monkeypatch):
    import torchchain.experiment as experiment

    original = experiment._instantiate

    def with_batchnorm(node, what, kind, **kwargs):
        built = original(node, what, kind, **kwargs)
        if what == "model":
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(64), built)
        return built

    monkeypatch.setattr(experiment, "_instantiate", with_batchnorm)
    with pytest.raises(ConfigError, match="BatchNorm"):
        _run(tmp_path, "bn", ["privacy=dpsgd"])
    assert not (tmp_path / "bn" / "ledger").exists()


@pytest.mark.parametrize(
    "override, key",
    [
        ("privacy.noise_multiplier=0", "noise_multiplier"),
        ("privacy.clip=-1", "clip"),
        ("privacy.delta=0.5", "delta"),
        ("privacy.target_epsilon=-2", "target_epsilon"),
        ("privacy.noise_seed=-1", "noise_seed"),
        ("privacy.kind=laplace", "privacy.kind"),
    ],
)
def test_bad_privacy_values_fail_before_training(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key):
        _run(tmp_path, "bad", ["privacy=client_dp", override])
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "strategy",
    [["strategy=centered_clipping", "strategy.tau=auto", "strategy.momentum=0.5"], ["strategy=krum", "clients=5"], ["strategy=geomed"]],
)
def test_privacy_composes_with_stateful_and_robust_rules_under_attack(tmp_path, strategy):
    # The privacy ledger shares the round state with the strategy's own state (centered
    # clipping's centre and momentum); both must replay, under an omniscient attack.
    summary = _run(tmp_path, "mixed", ["privacy=client_dp", "privacy.noise_seed=2", "attack=alie", "rounds=2", *strategy])
    assert summary["privacy"]["epsilon"] == pytest.approx(_opacus_epsilon(1.0, 1.0, 2, 1e-5), rel=1e-12)
    report = audit_ledger(tmp_path / "mixed" / "ledger")
    assert len(report.rounds) == 2
