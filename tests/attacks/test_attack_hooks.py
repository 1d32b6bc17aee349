"""Attacks own their behaviour through hooks; the runtime only lends them a Forger and an evaluator."""

from __future__ import annotations

import pytest
import torch

from torchchain.attacks import Backdoor, Replay, Sybil, SignFlip


class RecordingForger:
    """A Forger that hands out labelled tokens, so a test sees exactly what an attack asked for."""

    def __init__(self, earlier: list[str]) -> None:
        self.earlier = earlier
        self.made: list[tuple[str, dict[str, torch.Tensor]]] = []

    def earlier_submissions(self) -> list[str]:
        return list(self.earlier)

    def submit_as(self, identity: str, update):
        self.made.append((identity, dict(update)))
        return f"signed-by-{identity}"


def _update(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2,), value)}


def test_replay_resends_earlier_submissions_and_is_silent_in_round_one() -> None:
    attack = Replay()
    malicious = [(1, _update(0.5)), (4, _update(0.5))]
    assert attack.forge(malicious=malicious, forger=RecordingForger([])) == []
    # Client 1 (first malicious) takes earlier[(1 + 0) % 3], client 4 takes earlier[(4 + 1) % 3].
    assert attack.forge(malicious=malicious, forger=RecordingForger(["a", "b", "c"])) == ["b", "c"]


def test_sybil_signs_flipped_updates_under_fresh_identities() -> None:
    attack = Sybil(identities=2, scale=3.0)
    forger = RecordingForger([])
    forged = attack.forge(malicious=[(2, _update(0.5))], forger=forger)
    assert forged == ["signed-by-sybil/2/0", "signed-by-sybil/2/1"]
    for _, update in forger.made:
        assert torch.equal(update["w"], torch.full((2,), -1.5))


def test_model_poisoning_attacks_forge_nothing() -> None:
    forger = RecordingForger(["a"])
    assert SignFlip().forge(malicious=[(0, _update(1.0))], forger=forger) == []
    assert forger.made == []


def test_backdoor_reports_its_success_rate_on_triggered_images_of_other_classes() -> None:
    attack = Backdoor(target_label=7, trigger_size=2)
    features = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5
    targets = torch.tensor([7, 1, 2, 7, 3, 4])
    seen = {}

    def evaluate(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        seen["x"], seen["y"] = x, y
        return {"accuracy": 0.75}

    metrics = attack.evaluation_metrics(evaluate, features, targets)
    assert metrics == {"backdoor_accuracy": 0.75}
    assert seen["x"].shape[0] == 4 and bool((seen["y"] == 7).all())  # the two true 7s are left out
    assert not torch.equal(seen["x"], features[targets != 7])  # the trigger was stamped


def test_attacks_without_extra_metrics_report_none() -> None:
    assert SignFlip().evaluation_metrics(lambda x, y: {"accuracy": 1.0}, torch.zeros(2, 3), torch.zeros(2)) == {}


@pytest.mark.parametrize("mode", ["truncate", "flip", "garbage"])
def test_a_malformed_encoding_is_rejected_every_round_and_the_rest_aggregate(tmp_path, mode) -> None:
    from torchchain.chain.ledger import Ledger
    from torchchain.experiment import run
    from torchchain.protocol.audit import audit_ledger

    from composing import FAST, compose_config

    summary = run(
        compose_config([*FAST, "rounds=2", "clients=5", "byzantine=1", "codec=quantize", "attack=malformed", f"attack.mode={mode}"]),
        tmp_path,
    )
    ledger = Ledger.open(tmp_path / "ledger")
    for block in ledger.iter_blocks(1):
        assert block.meta["rejected"]["counts"] == {"malformed": 1}
        assert len(block.transactions) == 4
    assert summary["rejected"] == 2
    assert len(audit_ledger(tmp_path / "ledger").rounds) == 2


def test_a_tampered_payload_is_signed_so_only_the_decoder_can_tell() -> None:
    from torchchain.attacks import MalformedEncoding

    payload = (8).to_bytes(8, "little") + b"{\"a\": 1}" + bytes(range(48))
    flipped = MalformedEncoding(mode="flip").tamper_payload(payload, generator=torch.Generator().manual_seed(0))
    assert len(flipped) == len(payload) and flipped != payload and flipped[:8] == payload[:8]
    with pytest.raises(Exception, match="mode"):
        MalformedEncoding(mode="shuffle")
