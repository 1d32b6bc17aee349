"""The attestation sidecar of a ledger: written atomically by the writer alone, read with a bound."""

from __future__ import annotations

import os

import pytest

from torchchain.chain.ledger import ATTESTATIONS_DIR, TMP_PREFIX, Ledger
from torchchain.errors import LedgerError

BLOCK = "ab" * 32


def test_put_and_get_round_trip(tmp_path, genesis):
    with Ledger.create(tmp_path / "ledger", genesis, blobs=[b"model-0"]) as ledger:
        assert not (tmp_path / "ledger" / ATTESTATIONS_DIR).exists()  # created on first use
        ledger.put_attestations(BLOCK, b'{"attestations":[]}')
        assert ledger.get_attestations(BLOCK, max_bytes=64) == b'{"attestations":[]}'
        ledger.put_attestations(BLOCK, b"{}")  # rewritten whole
        assert ledger.get_attestations(BLOCK, max_bytes=64) == b"{}"
        assert not [n for n in os.listdir(tmp_path / "ledger" / ATTESTATIONS_DIR) if n.startswith(TMP_PREFIX)]


def test_readers_cannot_write_and_reads_are_bounded(tmp_path, genesis):
    Ledger.create(tmp_path / "ledger", genesis, blobs=[b"model-0"]).put_attestations(BLOCK, b"x" * 100)
    reader = Ledger.open(tmp_path / "ledger")
    with pytest.raises(LedgerError, match="opened for reading"):
        reader.put_attestations(BLOCK, b"{}")
    with pytest.raises(LedgerError, match="over the limit of 99 bytes"):
        reader.get_attestations(BLOCK, max_bytes=99)
    with pytest.raises(LedgerError, match="no attestations are stored"):
        reader.get_attestations("cd" * 32, max_bytes=1000)
    with pytest.raises(LedgerError, match="64 lowercase hex"):
        reader.get_attestations("../blocks/x", max_bytes=1000)


def test_a_writer_clears_half_written_sidecars_left_by_a_crash(tmp_path, genesis):
    Ledger.create(tmp_path / "ledger", genesis, blobs=[b"model-0"]).close()
    folder = tmp_path / "ledger" / ATTESTATIONS_DIR
    folder.mkdir()
    (folder / f"{TMP_PREFIX}half").write_bytes(b"{")
    Ledger.open_writer(tmp_path / "ledger").close()
    assert os.listdir(folder) == []
