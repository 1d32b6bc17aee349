"""chain.keep_updates: old update blobs are pruned, the chain still verifies and audits the
retained range, and a pruned ledger is never mistaken for a tampered one (or the reverse)."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchchain.chain.ledger import BLOBS_DIR, BLOCKS_DIR, Ledger
from torchchain.errors import LedgerError
from torchchain.experiment import run
from torchchain.protocol.audit import audit_ledger
from torchchain.protocol.verify import verify_ledger

from composing import FAST, compose_config

ROUNDS, KEEP = 6, 2


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pruned")
    run(compose_config([*FAST, f"rounds={ROUNDS}", f"chain.keep_updates={KEEP}", "clients=4"]), folder)
    return folder / "ledger"


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _update_hashes(ledger: Ledger, height: int) -> list[str]:
    return [tx.update_hash for tx in ledger.block(height).transactions]


def test_old_update_blobs_are_pruned_and_the_rest_kept(pruned_run):
    ledger = Ledger.open(pruned_run)
    for height in range(1, ROUNDS + 1):
        stored = [ledger.has_blob(d) for d in _update_hashes(ledger, height)]
        assert all(stored) if height > ROUNDS - KEEP else not any(stored), height
        # Models and round records stay whatever the height.
        assert ledger.has_blob(ledger.block(height).header.model_hash)


def test_a_pruned_ledger_verifies_and_says_what_was_pruned(pruned_run):
    report = verify_ledger(pruned_run)
    assert report.pruned == 4 * (ROUNDS - KEEP) and report.pruned_below == ROUNDS - KEEP
    assert "pruned by the retention rule" in report.summary()


def test_audit_replays_the_retained_range_and_names_the_rest(pruned_run):
    report = audit_ledger(pruned_run)
    assert [r.height for r in report.rounds] == list(range(ROUNDS - KEEP + 1, ROUNDS + 1))
    assert report.skipped == (1, ROUNDS - KEEP)
    assert f"not replayed: heights 1 to {ROUNDS - KEEP}" in report.summary()
    assert "chain.keep_updates=2" in report.summary()


def test_a_missing_update_blob_in_the_retained_range_is_tampering(pruned_run, tmp_path):
    copy = _copy(pruned_run, tmp_path / "ledger")
    digest = _update_hashes(Ledger.open(copy), ROUNDS - KEEP + 1)[0]
    (copy / BLOBS_DIR / digest).unlink()
    with pytest.raises(LedgerError, match="update blob .* is missing"):
        verify_ledger(copy)


def test_an_altered_blob_in_the_pruned_range_is_tampering(pruned_run, tmp_path):
    copy = _copy(pruned_run, tmp_path / "ledger")
    digest = _update_hashes(Ledger.open(copy), 1)[0]
    (copy / BLOBS_DIR / digest).write_bytes(b"not the update")
    with pytest.raises(LedgerError, match="corrupt"):
        verify_ledger(copy)


def test_a_missing_model_blob_in_the_pruned_range_is_tampering(pruned_run, tmp_path):
    copy = _copy(pruned_run, tmp_path / "ledger")
    (copy / BLOBS_DIR / Ledger.open(copy).block(1).header.model_hash).unlink()
    with pytest.raises(LedgerError, match="model blob .* is missing"):
        verify_ledger(copy)


def test_without_retention_a_deleted_old_update_is_tampering_not_pruning(tmp_path):
    folder = tmp_path / "run"
    run(compose_config([*FAST, "rounds=3", "clients=4"]), folder)
    ledger = Ledger.open(folder / "ledger")
    (folder / "ledger" / BLOBS_DIR / _update_hashes(ledger, 1)[0]).unlink()
    with pytest.raises(LedgerError, match="update blob .* is missing"):
        verify_ledger(folder / "ledger")


def test_the_summary_reports_the_ledger_size(tmp_path):
    summary = run(compose_config([*FAST, "rounds=3", "clients=4", "chain.keep_updates=1"]), tmp_path)
    files = [*(tmp_path / "ledger" / BLOCKS_DIR).iterdir(), *(tmp_path / "ledger" / BLOBS_DIR).iterdir()]
    assert summary["ledger_bytes"] == sum(p.stat().st_size for p in files)


@pytest.mark.parametrize("value", ["0", "-1", "some", "1.5", "true"])
def test_a_bad_retention_setting_is_refused_before_any_work(tmp_path, value):
    from torchchain.errors import ConfigError

    with pytest.raises(ConfigError, match="chain.keep_updates"):
        run(compose_config([*FAST, f"chain.keep_updates={value}"]), tmp_path)
    assert not (tmp_path / "ledger").exists()
