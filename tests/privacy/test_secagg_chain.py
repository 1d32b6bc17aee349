"""Secure aggregation in the chain: only masked updates and their sum reach the ledger, and audit re-unmasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hostile_helpers as h
from composing import FAST, compose_config
from torchchain.chain.block import make_block
from torchchain.chain.crypto import sha256_hex
from torchchain.chain.encoding import canonical_json
from torchchain.chain.ledger import BLOBS_DIR, BLOCKS_DIR, Ledger, block_file_name
from torchchain.errors import ConfigError, LedgerError, SerializationError
from torchchain.experiment import run
from torchchain.privacy.secagg import (
    RevealedShares,
    SecAggConfig,
    SecAggError,
    decode_fixed_point,
    decode_masked_input,
    encode_fixed_point,
    quantization_error_bound,
    setup_client,
)
from torchchain.protocol.audit import audit_ledger
from torchchain.protocol.record import RoundRecord, SecAggRecord
from torchchain.protocol.round import ReplayMismatch, RoundRules
from torchchain.protocol.secure_round import (
    SECAGG_CODEC,
    SignedMessage,
    Transcript,
    check_transcript,
    sign_message,
    unmask_round,
)
from torchchain.runtime.secure import SecureClient, SecureRound
from torchchain.runtime.simulation import Simulation
from torchchain.updates.delta import apply_delta, flatten, unflatten
from torchchain.updates.serialize import update_from_bytes, update_to_bytes

CLIENTS = 5
FEDAVG = ["strategy=fedavg", "strategy.weights=equal"]
PLAIN = [*FAST, f"clients={CLIENTS}", "model=linear", *FEDAVG]
SECAGG = [*PLAIN, "privacy=secagg", "privacy.noise_seed=3"]


def _run(
    folder: Path, overrides: list[str], monkeypatch: pytest.MonkeyPatch | None = None
) -> dict[tuple[int, int], torch.Tensor]:
    """Run ``overrides`` into ``folder``; return every client's plaintext update by (round, client index)."""
    deltas: dict[tuple[int, int], torch.Tensor] = {}
    original = Simulation._local_updates

    def capture(self, round, clients, seconds):
        result = original(self, round, clients, seconds)
        deltas.update({(round, index): flatten(delta) for index, delta in result.items()})
        return result

    with pytest.MonkeyPatch.context() if monkeypatch is None else monkeypatch.context() as patch:
        patch.setattr(Simulation, "_local_updates", capture)
        run(compose_config(overrides), folder)
    return deltas


def _blocks(folder: Path):
    with Ledger.open(folder / "ledger") as ledger:
        return ledger, [ledger.block(i) for i in range(ledger.height + 1)]


def _blob(folder: Path, digest: str) -> bytes:
    return (folder / "ledger" / BLOBS_DIR / digest).read_bytes()


def _config(folder: Path):
    with Ledger.open(folder / "ledger") as ledger:
        return RoundRules.from_genesis(ledger.genesis).secagg


def _index_of() -> dict[str, int]:
    _, keys = h.run_keys(0, CLIENTS)
    return {key.public_key: i for i, key in enumerate(keys)}


@pytest.fixture(scope="module")
def honest(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("secagg") / "honest"
    return folder, _run(folder, [*SECAGG, "rounds=2"])


@pytest.fixture(scope="module")
def dropout(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("secagg") / "dropout"
    return folder, _run(folder, [*SECAGG, "rounds=2", "privacy.dropout=0.3"])


def _check_round_sums(folder: Path, deltas: dict) -> list[SecAggRecord]:
    """Every block: masked payloads only, the recorded sum is the survivors' sum, model = parent + sum / survivors."""
    config = _config(folder)
    index = _index_of()
    _, blocks = _blocks(folder)
    records = []
    for parent, block in zip(blocks, blocks[1:]):
        record = RoundRecord.from_block(block)
        assert record.secagg is not None and record.outcome == "aggregated"
        survivors = [tx.client for tx in block.transactions]
        assert not set(survivors) & set(record.secagg.dropped)
        dim = next(iter(deltas.values())).numel()
        expected = torch.zeros(dim, dtype=torch.float64)
        for tx in block.transactions:
            assert tx.codec == SECAGG_CODEC
            payload = _blob(folder, tx.update_hash)
            with pytest.raises(SerializationError):
                update_from_bytes(payload, max_bytes=len(payload))  # not float tensors
            masked = decode_masked_input(payload, client=tx.client, round_number=block.header.round, dim=dim, config=config)
            plain = deltas[(block.header.round, index[tx.client])]
            encoded = encode_fixed_point(plain, config)
            assert not torch.equal(masked, encoded)
            assert (decode_fixed_point(masked, config) - plain).abs().max() > 1.0  # nothing like the update
            expected += decode_fixed_point(encoded, config)
        parent_model = update_from_bytes(_blob(folder, parent.header.model_hash), max_bytes=1 << 30)
        template = {k: v for k, v in parent_model.items() if v.is_floating_point()}
        sum_bytes = update_to_bytes(unflatten(expected, template, dtype=torch.float64))
        assert record.secagg.sum == sha256_hex(sum_bytes)
        recorded_sum = flatten(update_from_bytes(_blob(folder, record.secagg.sum), max_bytes=1 << 30))
        model = apply_delta(parent_model, unflatten(recorded_sum / len(survivors), template, dtype=torch.float64))
        assert sha256_hex(update_to_bytes(model)) == block.header.model_hash
        assert record.trust == {c: 1.0 / len(survivors) for c in survivors}
        records.append(record.secagg)
    return records


def test_an_honest_run_puts_only_masked_updates_and_their_sum_on_the_ledger(honest):
    folder, deltas = honest
    assert len(audit_ledger(folder / "ledger").rounds) == 2
    records = _check_round_sums(folder, deltas)
    for record, block in zip(records, _blocks(folder)[1][1:]):
        assert record.dropped == () and record.rejected == {} and record.refused == {} and record.failure is None
        assert len(block.transactions) == CLIENTS
        assert block.meta["version"] == 3
        transcript = Transcript.from_bytes(_blob(folder, record.transcript), max_bytes=1 << 24)
        assert len(transcript.keys) == len(transcript.dealt) == len(transcript.reveals) == CLIENTS
        assert transcript.request.dropped == ()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["privacy"]["kind"] == "secagg" and summary["privacy"]["dropped"] == 0
    with Ledger.open(folder / "ledger") as ledger:  # the key seed and the dropout rate are local
        assert ledger.genesis_info.config["privacy"] == {
            "kind": "secagg", "threshold": None, "clip": 1.0, "frac_bits": 20, "ring_bits": 32,
        }


def test_dropped_clients_are_recorded_and_the_round_completes(dropout):
    folder, deltas = dropout
    assert len(audit_ledger(folder / "ledger").rounds) == 2
    records = _check_round_sums(folder, deltas)
    for record, block in zip(records, _blocks(folder)[1][1:]):
        # floor(0.3 * 5) = 1 client drops after dealing its shares; the other 4 are summed.
        assert len(record.dropped) == 1 and len(block.transactions) == CLIENTS - 1
        transcript = Transcript.from_bytes(_blob(folder, record.transcript), max_bytes=1 << 24)
        assert transcript.request.dropped == record.dropped
        assert len(transcript.dealt) == CLIENTS  # the dropped client dealt its shares before leaving
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["privacy"]["dropped"] == 2 and summary["privacy"]["failed_rounds"] == 0


def test_the_secure_aggregate_is_plain_fedavg_within_the_quantization_bound(honest, tmp_path):
    folder, deltas = honest
    plain_folder = tmp_path / "plain"
    plain = _run(plain_folder, [*PLAIN, "rounds=1"])
    config = _config(folder)
    # The same seed trains the same updates; none reaches the clip, so only rounding differs.
    for key, delta in plain.items():
        assert torch.equal(delta, deltas[key])
        assert delta.abs().max() < config.clip
    secure_block, plain_block = _blocks(folder)[1][1], _blocks(plain_folder)[1][1]
    assert plain_block.meta["version"] == 2 and "secagg" not in plain_block.meta  # plain chains are unchanged
    secure_model = flatten(update_from_bytes(_blob(folder, secure_block.header.model_hash), max_bytes=1 << 30))
    plain_model = flatten(update_from_bytes(_blob(plain_folder, plain_block.header.model_hash), max_bytes=1 << 30))
    # The mean of n rounded updates is off by at most n * 2^-(frac_bits+1) / n, plus float32 rounding.
    bound = quantization_error_bound(CLIENTS, config) / CLIENTS + 2 * torch.finfo(torch.float32).eps
    gap = (secure_model - plain_model).abs().max().item()
    assert gap <= bound
    assert gap > 0  # the models differ: the secure one really went through fixed point


# -- a miner that edits the ledger -------------------------------------------------------------


def _re_mine_head(folder: Path, edit_meta) -> Path:
    """Re-mine the head block with the node's key after ``edit_meta(meta)``; returns the ledger path."""
    ledger_path = folder / "ledger"
    with Ledger.open(ledger_path) as ledger:
        head = ledger.head
        parent = ledger.block(head.header.height - 1)
    meta = json.loads(json.dumps(head.meta))
    edit_meta(meta)
    node_key, _ = h.run_keys(0, CLIENTS)
    forged = make_block(
        prev=parent, round=head.header.round, transactions=list(head.transactions), meta=meta,
        model_hash=head.header.model_hash, miner=node_key, difficulty=head.header.difficulty,
        time_ms=head.header.time_ms,
    )
    (ledger_path / BLOCKS_DIR / block_file_name(head)).unlink()
    h.plant_block(ledger_path, forged)
    (folder / "summary.json").unlink()
    return ledger_path


def _put_blob(folder: Path, data: bytes) -> str:
    digest = sha256_hex(data)
    (folder / "ledger" / BLOBS_DIR / digest).write_bytes(data)
    return digest


def test_audit_catches_an_edited_revealed_share(honest, tmp_path):
    run_dir = h.copy_run(honest[0], tmp_path / "edited")

    def edit(meta):
        transcript = json.loads(_blob(run_dir, meta["secagg"]["transcript"]))
        shares = transcript["reveals"][0]["body"]["self_shares"]
        first = sorted(shares)[0]
        shares[first] = ("0" if shares[first][0] != "0" else "1") + shares[first][1:]
        meta["secagg"]["transcript"] = _put_blob(run_dir, canonical_json(transcript))

    with pytest.raises(ReplayMismatch, match="not signed by the client"):
        audit_ledger(_re_mine_head(run_dir, edit))


def test_audit_catches_an_edited_dropout_set(dropout, tmp_path):
    run_dir = h.copy_run(dropout[0], tmp_path / "edited")

    def edit(meta):
        assert len(meta["secagg"]["dropped"]) == 1
        meta["secagg"]["dropped"] = []

    with pytest.raises(ReplayMismatch, match="dropout set"):
        audit_ledger(_re_mine_head(run_dir, edit))


def test_audit_catches_an_edited_sum(honest, tmp_path):
    run_dir = h.copy_run(honest[0], tmp_path / "edited")

    def edit(meta):
        total = update_from_bytes(_blob(run_dir, meta["secagg"]["sum"]), max_bytes=1 << 30)
        meta["secagg"]["sum"] = _put_blob(run_dir, update_to_bytes({k: v * 2 for k, v in total.items()}))

    with pytest.raises(ReplayMismatch, match="unmasked sum"):
        audit_ledger(_re_mine_head(run_dir, edit))


def test_audit_catches_a_swapped_masked_payload(honest, tmp_path):
    run_dir = h.copy_run(honest[0], tmp_path / "swapped")
    first, second = _blocks(run_dir)[1][-1].transactions[:2]
    a, b = _blob(run_dir, first.update_hash), _blob(run_dir, second.update_hash)
    (run_dir / "ledger" / BLOBS_DIR / first.update_hash).write_bytes(b)
    (run_dir / "ledger" / BLOBS_DIR / second.update_hash).write_bytes(a)
    with pytest.raises(LedgerError, match=first.update_hash[:12] + "|" + second.update_hash[:12]):
        audit_ledger(run_dir / "ledger")


def test_audit_catches_a_survivor_censored_after_it_revealed(honest, tmp_path):
    # The miner leaves one survivor's transaction out of the block but keeps the transcript whose
    # request and reveals counted it: the request no longer names the block's survivors.
    run_dir = h.copy_run(honest[0], tmp_path / "censored")
    ledger_path = run_dir / "ledger"
    _, blocks = _blocks(run_dir)
    head, parent = blocks[2], blocks[1]
    transactions = list(head.transactions[1:])
    meta = json.loads(json.dumps(head.meta))
    meta["trust"] = {tx.client: meta["trust"][tx.client] for tx in transactions}
    meta["randomness"] = h.round_meta(transactions, parent)["randomness"]
    node_key, _ = h.run_keys(0, CLIENTS)
    forged = make_block(
        prev=parent, round=head.header.round, transactions=transactions, meta=meta, model_hash=head.header.model_hash,
        miner=node_key, difficulty=head.header.difficulty, time_ms=head.header.time_ms,
    )
    (ledger_path / BLOCKS_DIR / block_file_name(head)).unlink()
    h.plant_block(ledger_path, forged)
    (run_dir / "summary.json").unlink()
    with pytest.raises(ReplayMismatch, match="reveal request does not name exactly the accepted clients"):
        audit_ledger(ledger_path)


# -- misbehaving clients -----------------------------------------------------------------------


def test_a_malformed_masked_input_is_rejected_and_the_round_completes(tmp_path):
    folder = tmp_path / "malformed"
    summary = run(compose_config([*SECAGG, "rounds=1", "attack=malformed", "attack.mode=garbage", "byzantine=1"]), folder)
    block = _blocks(folder)[1][1]
    record = RoundRecord.from_block(block)
    assert record.outcome == "aggregated" and len(block.transactions) == CLIENTS - 1
    assert record.rejected.counts == {"malformed_masked_input": 1}
    bad = record.rejected.sample[0]
    assert "masked input" in bad["reason"]
    assert record.secagg.dropped == (bad["client"],)  # its masks were removed with the others' shares
    assert summary["rejected"] == 1
    audit_ledger(folder / "ledger")


def test_a_client_revealing_a_wrong_share_is_rejected_and_the_round_completes(tmp_path, monkeypatch):
    _, keys = h.run_keys(0, CLIENTS)
    liar = keys[2].public_key
    original = SecureClient.reveal

    def reveal(self, request, config):
        answer = original(self, request, config)
        if self.client != liar:
            return answer
        shares = RevealedShares.from_bytes(SignedMessage.from_bytes(answer, what="reveal", max_bytes=1 << 20).body)
        first = sorted(shares.self_shares)[0]
        wrong = bytes([shares.self_shares[first][0] ^ 1]) + shares.self_shares[first][1:]
        lie = RevealedShares(round=shares.round, holder=shares.holder, self_shares={**shares.self_shares, first: wrong},
                             mask_shares=shares.mask_shares)
        return sign_message(self.key, lie.to_bytes()).to_bytes()

    monkeypatch.setattr(SecureClient, "reveal", reveal)
    folder = tmp_path / "liar"
    deltas = _run(folder, [*SECAGG, "rounds=1"], monkeypatch)
    record = RoundRecord.from_block(_blocks(folder)[1][1])
    assert record.outcome == "aggregated"
    assert list(record.secagg.rejected) == [liar] and "wrong share" in record.secagg.rejected[liar]
    _check_round_sums(folder, deltas)  # the liar's update still counts: only its shares are refused
    audit_ledger(folder / "ledger")  # the replay rejects the same share for the same reason


def test_fewer_survivors_than_the_threshold_keep_the_parent_model(tmp_path):
    folder = tmp_path / "few"
    summary = run(compose_config([*SECAGG, "rounds=1", "privacy.threshold=4", "privacy.dropout=0.4"]), folder)
    genesis, block = _blocks(folder)[1]
    record = RoundRecord.from_block(block)
    assert record.outcome == "kept_parent"
    assert record.secagg.failure == {"code": "too_few_survivors", "reason": "only 3 valid masked inputs; threshold is 4"}
    assert len(record.secagg.dropped) == 2 and record.secagg.sum is None
    assert block.header.model_hash == genesis.header.model_hash
    assert set(record.trust.values()) == {0.0}
    transcript = Transcript.from_bytes(_blob(folder, record.secagg.transcript), max_bytes=1 << 24)
    assert transcript.request is None and transcript.reveals == ()  # nobody revealed anything
    assert summary["privacy"]["failed_rounds"] == 1
    assert len(audit_ledger(folder / "ledger").rounds) == 1


def test_the_node_refuses_keys_a_member_did_not_sign_and_clients_check_what_it_forwards():
    config = SecAggConfig(threshold=2, clip=1.0, frac_bits=16, ring_bits=32)
    keys = h.KEYS[:4]
    sample = {k.public_key for k in keys}
    clients = {k.public_key: SecureClient(k, 1, seed=bytes([i]) * 16) for i, k in enumerate(keys)}
    victim = keys[3].public_key
    # Someone without the victim's chain key advertises mask keys in its name (they would let it
    # compute the victim's masks).
    forged = sign_message(h.OUTSIDER, setup_client(victim, 1, seed=b"f" * 16).public.to_bytes()).to_bytes()
    messages = {key: client.advertise() for key, client in clients.items()} | {victim: forged}
    server = SecureRound(round_number=1, sample=sample, config=config, reveal=lambda request: {
        key: clients[key].reveal(request, config) for key in request.survivors
    })
    view = server.collect_keys(messages)
    assert "not signed" in server.refused[victim] and victim not in server.roster
    # A client handed a roster with the forged keys refuses to deal to it.
    bad_view = Transcript(round=1, keys=tuple(sorted(
        (*view.keys, SignedMessage.from_bytes(forged, what="keys", max_bytes=4096)),
        key=lambda m: json.loads(m.body)["client"],
    )))
    with pytest.raises(SecAggError, match="not signed by the client it names"):
        clients[keys[0].public_key].deal(bad_view, sample=sample, config=config)
    honest = [k.public_key for k in keys[:3]]
    inboxes = server.route({key: clients[key].deal(view, sample=sample, config=config) for key in honest})
    assert server.participants == frozenset(honest)
    updates = {key: torch.linspace(-0.5, 0.5, 7, dtype=torch.float64) * (i + 1) for i, key in enumerate(honest)}
    masked = {key: clients[key].mask(updates[key], inboxes[key], server.view(), sample=sample, config=config)
              for key in honest}
    transcript = server.finish(sorted(masked))
    checked = check_transcript(transcript, round_number=1, sample=sample, config=config)
    inputs = {key: decode_masked_input(payload, client=key, round_number=1, dim=7, config=config)
              for key, payload in masked.items()}
    outcome = unmask_round(checked, inputs, dim=7)
    assert outcome.failure is None and outcome.dropped == ()
    assert torch.equal(outcome.sum, sum(decode_fixed_point(encode_fixed_point(u, config), config) for u in updates.values()))
    with pytest.raises(SecAggError, match="already revealed"):  # one reveal per client and round
        clients[honest[0]].reveal(transcript.request, config)


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["strategy=median"], r"robust rules \(Median\) need individual updates"),
        (["strategy=fltrust"], r"robust rules \(FLTrust\) need individual updates"),
        (["strategy=fedavg"], "strategy=fedavg strategy.weights=equal"),  # the default weighs by samples
        ([*FEDAVG, "strategy.pre=[bucketing]"], "pre-aggregation"),
        ([*FEDAVG, "codec=quantize"], "use codec=none"),
        ([*FEDAVG, "privacy.threshold=1"], "privacy.threshold"),
        ([*FEDAVG, "privacy.threshold=6"], "privacy.threshold"),
        ([*FEDAVG, "privacy.dropout=1.0"], "privacy.dropout"),
        ([*FEDAVG, "privacy.dropout=-0.1"], "privacy.dropout"),
        ([*FEDAVG, "privacy.clip=0"], "privacy.clip"),
        ([*FEDAVG, "privacy.ring_bits=4"], "privacy.ring_bits"),
        ([*FEDAVG, "privacy.clip=1000", "privacy.ring_bits=24"], "overflows the ring"),
        ([*FEDAVG, "clients_per_round=1"], "at least 2 clients per round"),
    ],
)
def test_bad_secagg_configs_fail_before_training(tmp_path, overrides, message):
    base = [*FAST, f"clients={CLIENTS}", "model=linear", "rounds=1", "privacy=secagg"]
    with pytest.raises(ConfigError, match=message):
        run(compose_config([*base, *overrides]), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_a_ledger_whose_genesis_combines_secagg_with_a_robust_rule_is_refused():
    secagg = {"kind": "secagg", "threshold": None, "clip": 1.0, "frac_bits": 20, "ring_bits": 32}
    config = {**h.config(h.MEDIAN), "privacy": secagg}
    with pytest.raises(ConfigError, match="need individual updates"):
        RoundRules.from_config(config, [k.public_key for k in h.KEYS[:4]])
    fedavg = {**config, "strategy": {**h.FEDAVG, "weights": "equal"}}
    assert RoundRules.from_config(fedavg, [k.public_key for k in h.KEYS[:4]]).secagg.threshold == 3


def test_the_secagg_record_and_transcript_are_parsed_strictly(honest):
    folder, _ = honest
    block = _blocks(folder)[1][1]
    entry = json.loads(json.dumps(block.meta["secagg"]))
    assert SecAggRecord.from_dict(entry).to_dict() == entry
    for bad in (
        {**entry, "extra": 1},
        {**entry, "dropped": ["A" * 64]},
        {**entry, "failure": {"code": "x"}},
        {**entry, "sum": "0" * 63},
    ):
        with pytest.raises(LedgerError, match="secagg"):
            SecAggRecord.from_dict(bad)
    data = _blob(folder, entry["transcript"])
    Transcript.from_bytes(data, max_bytes=len(data))
    with pytest.raises(SerializationError, match="canonical"):
        Transcript.from_bytes(data.replace(b'"round":1', b'"round": 1', 1), max_bytes=len(data) + 1)
    with pytest.raises(SerializationError, match="over the limit"):
        Transcript.from_bytes(data, max_bytes=len(data) - 1)
