from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest

from torchchain.chain.block import (
    BLOCK_DOMAIN,
    BLOCK_VERSION,
    MAX_TIME_MS,
    TX_DOMAIN,
    ZERO_HASH,
    Block,
    BlockHeader,
    Transaction,
    config_hash,
    genesis_info,
    make_block,
    make_genesis,
    merkle_root,
    meta_hash,
)
from torchchain.chain.crypto import SigningKey, sha256_hex
from torchchain.chain.encoding import canonical_json
from torchchain.chain.pow import meets_difficulty
from torchchain.errors import SerializationError


def _tx(key: SigningKey, **changes: Any) -> Transaction:
    fields: dict[str, Any] = {
        "client": key.public_key,
        "round": 1,
        "base_hash": "a" * 64,
        "update_hash": "b" * 64,
        "num_samples": 32,
        "codec": "none",
    }
    fields.update(changes)
    return Transaction(**fields)


# ---------------------------------------------------------------- transactions


def test_signing_payload_is_tagged_and_leaves_out_the_signature(keys: list[SigningKey]) -> None:
    tx = _tx(keys[0])
    payload = json.loads(tx.signing_payload())
    assert payload["domain"] == TX_DOMAIN
    assert "signature" not in payload
    assert tx.signed(keys[0]).signing_payload() == tx.signing_payload()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("client", "c" * 64),
        ("round", 2),
        ("base_hash", "d" * 64),
        ("update_hash", "e" * 64),
        ("num_samples", 33),
        ("codec", "topk"),
    ],
)
def test_signing_payload_changes_with_every_field(keys: list[SigningKey], field: str, value: Any) -> None:
    tx = _tx(keys[0])
    changed = dataclasses.replace(tx, **{field: value})
    assert changed.signing_payload() != tx.signing_payload()
    # So a signature never carries over to a transaction that differs in any field.
    assert not dataclasses.replace(tx.signed(keys[0]), **{field: value}).has_valid_signature()


def test_signed_transaction_verifies_and_unsigned_does_not(keys: list[SigningKey]) -> None:
    tx = _tx(keys[0])
    assert not tx.has_valid_signature()
    signed = tx.signed(keys[0])
    assert signed.has_valid_signature()
    assert len(signed.signature) == 128


def test_a_signature_by_another_key_does_not_verify(keys: list[SigningKey]) -> None:
    tx = _tx(keys[0])
    forged = dataclasses.replace(tx, signature=keys[1].sign(tx.signing_payload()))
    assert not forged.has_valid_signature()


def test_signed_refuses_a_key_that_is_not_the_client(keys: list[SigningKey]) -> None:
    with pytest.raises(ValueError, match="cannot sign"):
        _tx(keys[0]).signed(keys[1])


def test_tx_hash_covers_the_signature(keys: list[SigningKey]) -> None:
    tx = _tx(keys[0])
    signed = tx.signed(keys[0])
    assert signed.tx_hash != tx.tx_hash
    assert signed.tx_hash == sha256_hex(canonical_json(signed.to_dict()))


def test_transaction_dict_round_trip(keys: list[SigningKey]) -> None:
    tx = _tx(keys[0]).signed(keys[0])
    assert Transaction.from_dict(tx.to_dict()) == tx


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("client", "A" * 64),
        ("client", "a" * 63),
        ("round", -1),
        ("round", True),
        ("round", 1.0),
        ("round", "1"),
        ("round", 2**63),
        ("base_hash", None),
        ("num_samples", False),
        ("codec", ""),
        ("codec", "has space"),
        ("codec", "x" * 65),
        ("codec", 3),
        ("signature", "0" * 127),
        ("signature", "G" * 128),
    ],
)
def test_transaction_from_dict_refuses_wrong_types_and_values(
    keys: list[SigningKey], field: str, value: Any
) -> None:
    d = _tx(keys[0]).signed(keys[0]).to_dict()
    d[field] = value
    with pytest.raises(SerializationError, match=f"'{field}'"):
        Transaction.from_dict(d, what="tx 7")


def test_transaction_from_dict_refuses_unknown_and_missing_keys(keys: list[SigningKey]) -> None:
    d = _tx(keys[0]).to_dict()
    with pytest.raises(SerializationError, match=r"unknown keys \['extra'\]"):
        Transaction.from_dict({**d, "extra": 1})
    del d["codec"]
    with pytest.raises(SerializationError, match=r"missing keys \['codec'\]"):
        Transaction.from_dict(d)
    with pytest.raises(SerializationError, match="expected a JSON object"):
        Transaction.from_dict([1, 2])


# ---------------------------------------------------------------- Merkle root


def test_merkle_root_matches_hand_computation() -> None:
    a, b, c = (hashlib.sha256(x).digest() for x in (b"a", b"b", b"c"))

    def h(x: bytes) -> bytes:
        return hashlib.sha256(x).digest()

    assert merkle_root([]) == hashlib.sha256(b"").hexdigest()
    assert merkle_root([a.hex()]) == a.hex()
    assert merkle_root([a.hex(), b.hex()]) == h(a + b).hex()
    assert merkle_root([a.hex(), b.hex(), c.hex()]) == h(h(a + b) + h(c + c)).hex()


def test_merkle_root_depends_on_order() -> None:
    a, b = sha256_hex(b"a"), sha256_hex(b"b")
    assert merkle_root([a, b]) != merkle_root([b, a])


def test_merkle_root_refuses_a_leaf_that_is_not_a_hash() -> None:
    with pytest.raises(SerializationError, match="merkle leaf"):
        merkle_root(["abc"])


# ---------------------------------------------------------------- headers and blocks


def test_header_hash_is_prefix_then_big_endian_nonce(genesis: Block) -> None:
    header = genesis.header
    prefix = header.prefix_bytes()
    assert b"nonce" not in prefix
    assert json.loads(prefix) == {k: v for k, v in header.to_dict().items() if k != "nonce"}
    assert header.hash() == hashlib.sha256(prefix + header.nonce.to_bytes(8, "big")).hexdigest()
    assert genesis.hash == header.hash()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", 1),
        ("version", 3),
        ("version", True),
        ("difficulty", 65),
        ("difficulty", -1),
        ("nonce", 2**64),
        ("nonce", -1),
        ("height", True),
        ("time_ms", 1.5),
        ("time_ms", -1),
        ("time_ms", MAX_TIME_MS + 1),
        ("prev_hash", "0" * 65),
        ("miner", "X" * 64),
    ],
)
def test_header_refuses_out_of_range_fields(genesis: Block, field: str, value: Any) -> None:
    d = genesis.header.to_dict()
    d[field] = value
    with pytest.raises(SerializationError, match=f"'{field}'"):
        BlockHeader.from_dict(d)


def test_make_genesis_fills_the_header(genesis: Block, keys: list[SigningKey], miner_key: SigningKey) -> None:
    header = genesis.header
    assert BLOCK_VERSION == 2
    assert (header.version, header.height, header.round, header.prev_hash) == (BLOCK_VERSION, 0, 0, ZERO_HASH)
    assert genesis.transactions == ()
    assert set(genesis.meta) == {"members", "miners", "config"}
    assert genesis.meta["members"] == sorted(k.public_key for k in keys)
    # By default the creating miner is the chain's only miner.
    assert genesis.meta["miners"] == [miner_key.public_key]
    assert header.config_hash == config_hash(genesis.meta["config"])
    assert header.meta_hash == meta_hash(genesis.meta)
    assert header.merkle_root == merkle_root([])
    assert header.miner == miner_key.public_key
    assert meets_difficulty(genesis.hash, 8)
    assert genesis.has_valid_signature()
    info = genesis_info(genesis)
    assert info.members == tuple(sorted(k.public_key for k in keys))
    assert info.miners == (miner_key.public_key,)
    assert info.difficulty == 8
    assert info.config_hash == header.config_hash
    assert dict(info.config) == genesis.meta["config"]


def test_make_genesis_sorts_the_miners_it_is_given(keys: list[SigningKey], miner_key: SigningKey) -> None:
    other = SigningKey.from_seed_material("tests/chain/other-miner")
    genesis = make_genesis(
        members=[k.public_key for k in keys], config={}, model_hash="0" * 64, miner=miner_key,
        miners=[other.public_key, miner_key.public_key], difficulty=1, time_ms=0,
    )
    assert genesis.meta["miners"] == sorted([other.public_key, miner_key.public_key])
    assert genesis.header.miner == miner_key.public_key
    assert genesis.has_valid_signature()


def test_make_genesis_refuses_repeated_or_malformed_members(keys: list[SigningKey], miner_key: SigningKey) -> None:
    common: dict[str, Any] = {"config": {}, "model_hash": "0" * 64, "miner": miner_key, "difficulty": 1, "time_ms": 0}
    with pytest.raises(SerializationError, match="repeat"):
        make_genesis(members=[keys[0].public_key] * 2, **common)
    with pytest.raises(SerializationError, match="members"):
        make_genesis(members=["nope"], **common)
    with pytest.raises(SerializationError, match="members"):
        make_genesis(members=[], **common)
    with pytest.raises(SerializationError, match="members"):
        make_genesis(members=keys[0].public_key, **common)


def test_make_genesis_refuses_repeated_or_malformed_miners_and_a_miner_not_listed(
    keys: list[SigningKey], miner_key: SigningKey
) -> None:
    common: dict[str, Any] = {
        "members": [k.public_key for k in keys], "config": {}, "model_hash": "0" * 64, "miner": miner_key,
        "difficulty": 1, "time_ms": 0,
    }
    with pytest.raises(SerializationError, match="miners must not repeat"):
        make_genesis(miners=[miner_key.public_key] * 2, **common)
    with pytest.raises(SerializationError, match="miners"):
        make_genesis(miners=[miner_key.public_key, "nope"], **common)
    with pytest.raises(SerializationError, match="one of the chain's miners"):
        make_genesis(miners=[keys[0].public_key], **common)
    with pytest.raises(SerializationError, match="one of the chain's miners"):
        make_genesis(miners=[], **common)


def test_genesis_info_refuses_a_meta_of_another_shape(genesis: Block, miner_key: SigningKey) -> None:
    def with_meta(meta: dict[str, Any]) -> Block:
        return Block(genesis.header, (), meta)

    meta = dict(genesis.meta)
    with pytest.raises(SerializationError, match=r"unknown keys \['extra'\]"):
        genesis_info(with_meta({**meta, "extra": 1}))
    with pytest.raises(SerializationError, match=r"missing keys \['miners'\]"):
        genesis_info(with_meta({k: v for k, v in meta.items() if k != "miners"}))
    with pytest.raises(SerializationError, match="'miners' must be a non-empty list"):
        genesis_info(with_meta({**meta, "miners": []}))
    with pytest.raises(SerializationError, match="'miners' must be sorted and without duplicates"):
        genesis_info(with_meta({**meta, "miners": [miner_key.public_key] * 2}))
    with pytest.raises(SerializationError, match="'config' must be a JSON object"):
        genesis_info(with_meta({**meta, "config": []}))


def test_genesis_info_refuses_more_keys_than_the_limit(genesis: Block) -> None:
    from torchchain.chain.block import MAX_MEMBERS

    too_many = [f"{i:064x}" for i in range(MAX_MEMBERS + 1)]
    with pytest.raises(SerializationError, match=f"over the limit of {MAX_MEMBERS}"):
        genesis_info(Block(genesis.header, (), {**genesis.meta, "members": too_many}))


def test_make_block_links_and_commits(genesis: Block, keys: list[SigningKey], miner_key: SigningKey) -> None:
    txs = [
        Transaction(k.public_key, 1, genesis.hash, sha256_hex(bytes([i])), 5).signed(k) for i, k in enumerate(keys)
    ]
    block = make_block(
        prev=genesis,
        round=1,
        transactions=txs,
        meta={"rejected": [], "trust": {}},
        model_hash=sha256_hex(b"model-1"),
        miner=miner_key,
        difficulty=8,
        time_ms=5,
    )
    header = block.header
    assert (header.height, header.round, header.prev_hash) == (1, 1, genesis.hash)
    assert header.config_hash == genesis.header.config_hash
    assert header.merkle_root == merkle_root([tx.tx_hash for tx in txs])
    assert header.meta_hash == meta_hash({"rejected": [], "trust": {}})
    assert block.transactions == tuple(txs)
    assert meets_difficulty(block.hash, 8)


def test_block_meta_is_a_private_copy(genesis: Block, miner_key: SigningKey) -> None:
    meta: dict[str, Any] = {"trust": {"x": 1.0}, "pair": (1, 2)}
    block = make_block(
        prev=genesis, round=1, transactions=[], meta=meta, model_hash="0" * 64,
        miner=miner_key, difficulty=1, time_ms=0,
    )
    meta["trust"]["x"] = 0.0
    assert block.meta == {"trust": {"x": 1.0}, "pair": [1, 2]}
    assert block.header.meta_hash == meta_hash(block.meta)


def test_block_signature_covers_the_domain_tagged_hash(genesis: Block, miner_key: SigningKey) -> None:
    header = genesis.header
    assert header.signing_payload() == BLOCK_DOMAIN + bytes.fromhex(genesis.hash)
    assert genesis.signature == miner_key.sign(header.signing_payload())
    assert genesis.has_valid_signature()
    unsigned = dataclasses.replace(genesis, signature="")
    assert not unsigned.has_valid_signature()
    assert unsigned.signed(miner_key) == genesis
    # A signature over the same hash without the domain tag is not a block signature.
    untagged = dataclasses.replace(genesis, signature=miner_key.sign(bytes.fromhex(genesis.hash)))
    assert not untagged.has_valid_signature()


def test_a_block_signature_does_not_carry_over_to_another_header(genesis: Block, miner_key: SigningKey) -> None:
    changed = Block(dataclasses.replace(genesis.header, time_ms=genesis.header.time_ms + 1), (), genesis.meta,
                    genesis.signature)
    assert not changed.has_valid_signature()


def test_a_block_signature_by_another_key_does_not_verify(genesis: Block, keys: list[SigningKey]) -> None:
    forged = dataclasses.replace(genesis, signature=keys[0].sign(genesis.header.signing_payload()))
    assert not forged.has_valid_signature()
    with pytest.raises(ValueError, match="cannot sign a block"):
        genesis.signed(keys[0])


def test_block_refuses_a_malformed_signature(genesis: Block) -> None:
    for bad in ("0" * 127, "G" * 128, "A" * 128):
        with pytest.raises(SerializationError, match="'signature'"):
            Block(genesis.header, (), genesis.meta, bad)


def test_block_file_holds_header_transactions_meta_and_signature(genesis: Block) -> None:
    d = json.loads(genesis.to_bytes())
    assert set(d) == {"header", "transactions", "meta", "signature"}
    assert d["signature"] == genesis.signature


def test_from_bytes_refuses_a_signature_that_is_not_a_string(genesis: Block) -> None:
    d = json.loads(genesis.to_bytes())
    for bad in (None, 1, ["0" * 128]):
        d["signature"] = bad
        with pytest.raises(SerializationError, match="'signature'"):
            Block.from_bytes(canonical_json(d), name="00000000-x.json")


def test_block_bytes_round_trip(ledger: Any) -> None:
    for block in ledger.blocks():
        data = block.to_bytes()
        assert Block.from_bytes(data) == block
        assert Block.from_bytes(data).to_bytes() == data


def _block_dict(ledger: Any) -> dict[str, Any]:
    return json.loads(ledger.block(1).to_bytes())


def test_from_bytes_refuses_non_canonical_bytes(ledger: Any) -> None:
    d = _block_dict(ledger)
    variants = [
        json.dumps(d, indent=1).encode(),
        json.dumps({k: d[k] for k in reversed(d)}, separators=(",", ":")).encode(),  # keys not sorted
        ledger.block(1).to_bytes() + b"\n",
        b" " + ledger.block(1).to_bytes(),
        ledger.block(1).to_bytes().replace(b'"trust":{', b'"trust" :{'),
    ]
    for data in variants:
        assert data != ledger.block(1).to_bytes()
        with pytest.raises(SerializationError, match="canonical|not valid JSON"):
            Block.from_bytes(data, name="00000001-x.json")


def test_from_bytes_refuses_a_float_spelled_another_way(ledger: Any) -> None:
    data = ledger.block(1).to_bytes()
    assert b":1.0" in data
    with pytest.raises(SerializationError, match="canonical"):
        Block.from_bytes(data.replace(b":1.0", b":1.00", 1))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(extra=1), r"unknown keys \['extra'\]"),
        (lambda d: d.pop("meta"), r"missing keys \['meta'\]"),
        (lambda d: d["header"].update(extra=1), r"header: missing keys \[\], unknown keys \['extra'\]"),
        (lambda d: d["transactions"][1].update(extra=1), r"transactions\[1\]: .*unknown keys \['extra'\]"),
        (lambda d: d["header"].update(round=True), r"header: .*'round'"),
        (lambda d: d["header"].update(nonce="1"), r"header: .*'nonce'"),
        (lambda d: d["transactions"][0].update(num_samples=1.0), r"transactions\[0\]: .*'num_samples'"),
        (lambda d: d["transactions"][2].update(update_hash="AB" * 32), r"transactions\[2\]: .*'update_hash'"),
        (lambda d: d.update(transactions={}), "'transactions' must be a JSON array"),
        (lambda d: d.update(meta=[]), "'meta' must be a JSON object"),
        (lambda d: d.update(header=[]), "expected a JSON object"),
    ],
)
def test_from_bytes_refuses_wrong_keys_and_types(ledger: Any, edit: Any, message: str) -> None:
    d = _block_dict(ledger)
    edit(d)
    with pytest.raises(SerializationError, match=message) as info:
        Block.from_bytes(canonical_json(d), name="00000001-x.json")
    assert str(info.value).startswith("00000001-x.json")


def test_from_bytes_checks_the_size_limit(ledger: Any) -> None:
    data = ledger.block(1).to_bytes()
    with pytest.raises(SerializationError, match="over the limit"):
        Block.from_bytes(data, max_bytes=len(data) - 1)


def test_meta_nested_beyond_the_limit_is_refused_when_built(genesis: Block, miner_key: SigningKey) -> None:
    from torchchain.chain.block import MAX_META_DEPTH

    def nested(levels: int) -> dict[str, Any]:
        value: Any = []
        for _ in range(levels - 2):
            value = [value]
        return {"a": value}  # the meta object, then levels - 1 arrays

    def build(meta: dict[str, Any]) -> Block:
        return make_block(
            prev=genesis, round=1, transactions=[], meta=meta, model_hash=genesis.header.model_hash,
            miner=miner_key, difficulty=0, time_ms=0,
        )

    block = build(nested(MAX_META_DEPTH))
    assert Block.from_bytes(block.to_bytes()) == block
    with pytest.raises(SerializationError, match="block meta: arrays and objects nest deeper than 32"):
        build(nested(MAX_META_DEPTH + 1))


def _sized_meta(genesis: Block, miner_key: SigningKey, target: int) -> dict[str, Any]:
    """A meta whose block (built on ``genesis``, unsigned nonce 0) is ``target`` bytes with a
    one-digit nonce and a signature."""
    small = make_block(
        prev=genesis, round=1, transactions=[], meta={"pad": ""}, model_hash=genesis.header.model_hash,
        miner=miner_key, difficulty=0, time_ms=0,
    )
    assert small.header.nonce == 0
    return {"pad": "x" * (target - len(small.to_bytes()))}


def test_make_block_refuses_a_block_over_the_size_limit_before_mining(
    genesis: Block, miner_key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchchain.chain.block as block_module
    from torchchain.chain.block import MAX_BLOCK_BYTES

    def no_mining(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("mined a block that is then refused")

    meta = _sized_meta(genesis, miner_key, MAX_BLOCK_BYTES + 1)
    monkeypatch.setattr(block_module, "mine_header", no_mining)
    monkeypatch.setattr(block_module, "mine_nonce", no_mining)
    with pytest.raises(SerializationError, match=f"over the limit of {MAX_BLOCK_BYTES} bytes"):
        make_block(
            prev=genesis, round=1, transactions=[], meta=meta, model_hash=genesis.header.model_hash,
            miner=miner_key, difficulty=8, time_ms=0,
        )
    with pytest.raises(SerializationError, match=f"over the limit of {MAX_BLOCK_BYTES} bytes"):
        make_genesis(
            members=list(genesis.meta["members"]), config=meta, model_hash=genesis.header.model_hash,
            miner=miner_key, difficulty=8, time_ms=0,
        )


def test_a_block_that_make_block_builds_near_the_limit_can_be_read_back(
    genesis: Block, miner_key: SigningKey
) -> None:
    from torchchain.chain.block import MAX_BLOCK_BYTES

    # The size check leaves room for the longest nonce (20 digits), so every block it lets
    # through parses within the limit that readers enforce.
    meta = _sized_meta(genesis, miner_key, MAX_BLOCK_BYTES - 20)
    block = make_block(
        prev=genesis, round=1, transactions=[], meta=meta, model_hash=genesis.header.model_hash,
        miner=miner_key, difficulty=0, time_ms=0,
    )
    data = block.to_bytes()
    assert len(data) <= MAX_BLOCK_BYTES
    assert Block.from_bytes(data) == block
    with pytest.raises(SerializationError, match="over the limit"):
        make_block(
            prev=genesis, round=1, transactions=[], meta={"pad": meta["pad"] + "x"},
            model_hash=genesis.header.model_hash, miner=miner_key, difficulty=0, time_ms=0,
        )
