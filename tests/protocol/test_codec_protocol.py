"""Codecs are protocol: recorded in every transaction, decoded identically by miner and auditor,
and a payload that does not decode is rejected with its reason, never a crash."""

from __future__ import annotations

import pytest
import torch

from torchchain.chain.block import Transaction
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.experiment import run
from torchchain.protocol.audit import audit_ledger
from torchchain.protocol.round import RoundRules
from torchchain.protocol.submission import RoundContext, Submission, select_submissions
from torchchain.chain.ledger import Ledger
from torchchain.updates.codecs import Quantize, RotateQuantize, codec_seed
from torchchain.updates.serialize import update_to_bytes

from composing import FAST, compose_config, run_stopped_before

KEYS = [SigningKey.from_seed_material(f"codec-test/{i}") for i in range(3)]
TEMPLATE = {"w": torch.zeros(64, 8), "b": torch.zeros(8)}
BASE = "ab" * 32


def _context(codec) -> RoundContext:
    return RoundContext(
        members=frozenset(k.public_key for k in KEYS), round=1, base_hash=BASE, template=TEMPLATE,
        max_update_bytes=1 << 20, codec=codec,
    )


def _submission(key: SigningKey, payload: bytes, tag: str) -> Submission:
    tx = Transaction(client=key.public_key, round=1, base_hash=BASE, update_hash=sha256_hex(payload), num_samples=5, codec=tag)
    return Submission(tx.signed(key), payload)


def _update(value: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(int(value * 100))
    return {k: torch.randn(v.shape, generator=g) * value for k, v in TEMPLATE.items()}


def test_an_encoded_update_is_accepted_and_decoded_as_the_codec_decodes_it() -> None:
    codec = RotateQuantize(bits=4)
    key = KEYS[0]
    seed = codec_seed(1, key.public_key)
    payload = codec.encode(_update(0.3), seed=seed, generator=torch.Generator().manual_seed(0))
    selection = select_submissions([_submission(key, payload, codec.tag())], _context(codec))
    assert not selection.rejected
    decoded = codec.decode(payload, TEMPLATE, seed=seed, max_bytes=len(payload))
    for name, tensor in selection.accepted[0][2].items():
        assert torch.equal(tensor, decoded[name])


def test_a_transaction_naming_another_codec_is_rejected() -> None:
    codec = Quantize(bits=8)
    payload = update_to_bytes(_update(0.3))
    selection = select_submissions([_submission(KEYS[0], payload, "none")], _context(codec))
    assert [(code, "quantize/8" in reason) for _, code, reason in selection.rejected] == [("unknown_codec", True)]


@pytest.mark.parametrize("damage", ["plain tensors", "truncated", "flipped byte", "other seed"])
def test_a_payload_that_does_not_decode_is_rejected_with_its_reason(damage: str) -> None:
    codec = RotateQuantize(bits=8)
    key = KEYS[1]
    payload = codec.encode(_update(0.3), seed=codec_seed(1, key.public_key), generator=torch.Generator().manual_seed(0))
    if damage == "plain tensors":
        payload = update_to_bytes(_update(0.3))
    elif damage == "truncated":
        payload = payload[: len(payload) // 2]
    elif damage == "flipped byte":
        payload = payload[:20] + bytes([payload[20] ^ 0xFF]) + payload[21:]
    selection = select_submissions([_submission(key, payload, codec.tag())], _context(codec))
    if damage == "other seed":
        # Encoded under another client's seed, the payload still decodes (the seed only rotates),
        # but to a different update than the sender computed: accepted, and its own loss.
        assert len(selection.accepted) == 1
        return
    assert len(selection.rejected) == 1 and selection.rejected[0][1] == "malformed"


@pytest.mark.parametrize("codec", ["quantize", "rotate_quantize", "topk"])
def test_a_run_with_a_codec_audits_from_the_ledger_alone(tmp_path, codec: str) -> None:
    summary = run(compose_config([*FAST, "rounds=3", "clients=4", f"codec={codec}"]), tmp_path)
    ledger = Ledger.open(tmp_path / "ledger")
    tags = {tx.codec for block in ledger.iter_blocks(1) for tx in block.transactions}
    assert len(tags) == 1 and tags.pop().startswith(codec)
    assert summary["rejected"] == 0
    assert len(audit_ledger(tmp_path / "ledger").rounds) == 3


def test_quantized_updates_are_smaller_and_the_summary_says_how_much(tmp_path) -> None:
    plain = run(compose_config([*FAST, "rounds=2", "clients=4"]), tmp_path / "plain")
    packed = run(compose_config([*FAST, "rounds=2", "clients=4", "codec=quantize", "codec.bits=4"]), tmp_path / "packed")
    # 4 bits instead of 32, less the per-tensor headers of this 4,810-parameter MLP.
    assert packed["mean_update_bytes"] < plain["mean_update_bytes"] / 5


def test_topk_error_feedback_survives_resume(tmp_path, monkeypatch) -> None:
    settings = [*FAST, "rounds=4", "clients=4", "codec=topk", "codec.fraction=0.05"]
    reference = run(compose_config(settings), tmp_path / "reference")
    run_stopped_before(3, settings, tmp_path / "stopped", monkeypatch)
    resumed = run(compose_config([*FAST, f"resume={tmp_path / 'stopped'}"]), tmp_path / "unused")
    # The residual each client had not sent yet came back from the checkpoint: same final model.
    assert resumed["model_hash"] == reference["model_hash"]


def test_the_codec_is_built_from_the_allow_list_only() -> None:
    from torchchain.errors import ConfigError

    config = {
        "clients": 3, "byzantine": 0, "chain": {"max_update_mb": 1},
        "strategy": {"_target_": "torchchain.strategies.FedAvg"},
        "codec": {"_target_": "pathlib.Path.touch"},
    }
    with pytest.raises(ConfigError, match="built-in codecs"):
        RoundRules.from_config(config, [k.public_key for k in KEYS])
    config["codec"] = {"_target_": "torchchain.updates.codecs.Quantize", "bits": 3}
    with pytest.raises(ConfigError, match="bits"):
        RoundRules.from_config(config, [k.public_key for k in KEYS])
