"""Blocks and transactions: the records the ledger stores, and their canonical bytes.

A :class:`Transaction` is a client's signed claim "in round r, starting from block B, I trained
on n samples and my update hashes to U". A :class:`Block` bundles the transactions of one round
with a :class:`BlockHeader` that commits to them (Merkle root), to the resulting global model
(model hash), to the run's configuration and to free-form metadata, and carries the proof of
work. Transactions are tied together by the Merkle tree of Merkle (1987), "A Digital Signature
Based on a Conventional Encryption Function", in the layout of Nakamoto (2008), "Bitcoin: A
Peer-to-Peer Electronic Cash System".

Every block is signed by its miner (Ed25519 over the domain-tagged block hash), and the genesis
block lists the keys allowed to mine (``miners``) beside the clients allowed to submit
(``members``), so a ledger rewritten by anyone else does not verify.

Every class here is immutable and validates its fields when built, so an instance that exists
is well-formed; ``from_dict``/``from_bytes`` are strict and accept exactly what ``to_dict``/
``to_bytes`` produce. Proof of work itself is :mod:`torchchain.chain.pow`, which works on bytes
and knows nothing of blocks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torchchain.chain.crypto import SigningKey, sha256_hex, verify_signature
from torchchain.chain.encoding import MAX_JSON_DEPTH, canonical_json, check_nesting, parse_json_object
from torchchain.chain.pow import mine_nonce
from torchchain.errors import SerializationError

__all__ = [
    "BLOCK_DOMAIN",
    "BLOCK_VERSION",
    "MAX_BLOCK_BYTES",
    "MAX_MEMBERS",
    "MAX_META_DEPTH",
    "MAX_TIME_MS",
    "TX_DOMAIN",
    "ZERO_HASH",
    "Block",
    "BlockHeader",
    "GenesisInfo",
    "Transaction",
    "config_hash",
    "genesis_info",
    "make_block",
    "make_genesis",
    "merkle_root",
    "meta_hash",
    "mine_header",
]

ZERO_HASH = "0" * 64
"""The ``prev_hash`` of the genesis block."""

BLOCK_VERSION = 2
TX_DOMAIN = "torchchain/tx/v1"
"""Domain tag in every signed transaction payload, so a signature made for anything else never
verifies as a transaction."""
BLOCK_DOMAIN = b"torchchain/block/v2\x00"
"""Prefix of the bytes a miner signs (then the 32-byte block hash), so a block signature is never
a valid signature of anything else."""

MAX_BLOCK_BYTES = 16 * 1024 * 1024
"""The largest block file any node writes or reads. A round block holds at most one
transaction per member and a bounded record of rejections, so this leaves room for
:data:`MAX_MEMBERS` members."""
MAX_MEMBERS = 20_000
"""The most client keys (and miner keys) a genesis block may list."""
MAX_TIME_MS = 253_402_300_799_999
"""The last millisecond of the year 9999: block times are Unix milliseconds up to this."""
MAX_INT = 2**63 - 1
MAX_NONCE = 2**64 - 1
MAX_DIFFICULTY = 64
MAX_CODEC_LENGTH = 64
MAX_META_DEPTH = MAX_JSON_DEPTH // 2
"""The deepest nesting of arrays and objects in a block's metadata (the meta object itself is
level 1), well inside what a block file may hold, so every block that can be built can also be
stored and read back."""

# Hashes and public keys are 64 lowercase hex characters, signatures 128.
_HEX_RE = {64: re.compile(r"[0-9a-f]{64}"), 128: re.compile(r"[0-9a-f]{128}")}
# Printable ASCII without spaces: a codec name is an identifier, not prose.
_CODEC_RE = re.compile(r"[\x21-\x7e]{1,%d}" % MAX_CODEC_LENGTH)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_int(what: str, name: str, value: Any, high: int, low: int = 0) -> None:
    # type() rather than isinstance(): bool is an int subclass, and True must not pass as 1.
    if type(value) is not int or not low <= value <= high:
        raise SerializationError(f"{what} field {name!r} must be an integer in [{low}, {high}], got {_show(value)}")


def _check_hex(what: str, name: str, value: Any, length: int = 64) -> None:
    if type(value) is not str or not _HEX_RE[length].fullmatch(value):
        raise SerializationError(
            f"{what} field {name!r} must be {length} lowercase hex characters, got {_show(value)}"
        )


def _check_keys(what: str, d: Any, expected: frozenset[str]) -> None:
    if not isinstance(d, dict):
        raise SerializationError(f"{what}: expected a JSON object, got {type(d).__name__}")
    missing = sorted(expected - d.keys())
    unknown = sorted(d.keys() - expected)
    if missing or unknown:
        raise SerializationError(f"{what}: missing keys {missing}, unknown keys {unknown}")


def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def _record_from_dict(cls: type, d: Any, *, what: str) -> Any:
    """Builds the frozen dataclass ``cls`` from exactly its fields; errors start with ``what``."""
    _check_keys(what, d, _field_names(cls))
    try:
        return cls(**d)
    except SerializationError as exc:
        raise SerializationError(f"{what}: {exc}") from None


@dataclass(frozen=True)
class Transaction:
    """A client's signed record of one update.

    Attributes:
        client: The client's public key (64 hex characters).
        round: The training round the update belongs to.
        base_hash: Hash of the block whose model the update was computed against.
        update_hash: SHA-256 (hex) of the update's canonical bytes; the bytes are a blob.
        num_samples: How many local samples the client trained on.
        codec: The name of the codec that produced the update bytes.
        signature: The client's Ed25519 signature over :meth:`signing_payload`, or ``""`` while
            unsigned.
    """

    client: str
    round: int
    base_hash: str
    update_hash: str
    num_samples: int
    codec: str = "none"
    signature: str = ""

    def __post_init__(self) -> None:
        what = "transaction"
        _check_hex(what, "client", self.client)
        _check_int(what, "round", self.round, MAX_INT)
        _check_hex(what, "base_hash", self.base_hash)
        _check_hex(what, "update_hash", self.update_hash)
        _check_int(what, "num_samples", self.num_samples, MAX_INT)
        if type(self.codec) is not str or not _CODEC_RE.fullmatch(self.codec):
            raise SerializationError(
                f"transaction field 'codec' must be 1 to {MAX_CODEC_LENGTH} printable ASCII characters "
                f"without spaces, got {_show(self.codec)}"
            )
        if self.signature != "":
            _check_hex(what, "signature", self.signature, 128)

    def signing_payload(self) -> bytes:
        """The bytes the client signs: every field but the signature, with a domain tag."""
        payload = self.to_dict()
        del payload["signature"]
        payload["domain"] = TX_DOMAIN
        return canonical_json(payload)

    def signed(self, key: SigningKey) -> Transaction:
        """Returns a copy signed by ``key``.

        Raises:
            ValueError: ``key`` is not the key of :attr:`client`.
        """
        if key.public_key != self.client:
            raise ValueError(
                f"cannot sign a transaction of client {self.client[:12]} with the key of {key.public_key[:12]}"
            )
        return dataclasses.replace(self, signature=key.sign(self.signing_payload()))

    def has_valid_signature(self) -> bool:
        """Whether :attr:`signature` is the client's valid signature over this transaction."""
        return verify_signature(self.client, self.signing_payload(), self.signature)

    @property
    def tx_hash(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`to_dict` (the signature included)."""
        return sha256_hex(canonical_json(self.to_dict()))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form, one key per field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, *, what: str = "transaction") -> Transaction:
        """Builds a transaction from :meth:`to_dict` output, strictly.

        Raises:
            SerializationError: A key is missing or unknown, or a field has the wrong type or
                value. The message starts with ``what`` and names the field.
        """
        return _record_from_dict(cls, d, what=what)


@dataclass(frozen=True)
class BlockHeader:
    """The hashed part of a block.

    Attributes:
        version: Format version, always :data:`BLOCK_VERSION`.
        height: Position in the chain; the genesis block has height 0.
        prev_hash: Hash of the previous block (:data:`ZERO_HASH` for genesis).
        round: The training round the block closes (0 for genesis).
        time_ms: Wall-clock time of mining, milliseconds since the Unix epoch.
        merkle_root: :func:`merkle_root` of the transactions' hashes, in block order.
        model_hash: SHA-256 of the global model blob after this block.
        config_hash: :func:`config_hash` of the run configuration in the genesis block.
        meta_hash: :func:`meta_hash` of the block's metadata.
        difficulty: Proof-of-work difficulty: the number of leading zero bits of the hash.
        miner: Public key of the node that mined the block.
        nonce: The proof-of-work nonce, below 2**64.
    """

    version: int
    height: int
    prev_hash: str
    round: int
    time_ms: int
    merkle_root: str
    model_hash: str
    config_hash: str
    meta_hash: str
    difficulty: int
    miner: str
    nonce: int

    def __post_init__(self) -> None:
        what = "block header"
        if type(self.version) is not int or self.version != BLOCK_VERSION:
            raise SerializationError(f"block header field 'version' must be {BLOCK_VERSION}, got {_show(self.version)}")
        _check_int(what, "height", self.height, MAX_INT)
        _check_hex(what, "prev_hash", self.prev_hash)
        _check_int(what, "round", self.round, MAX_INT)
        _check_int(what, "time_ms", self.time_ms, MAX_TIME_MS)
        _check_hex(what, "merkle_root", self.merkle_root)
        _check_hex(what, "model_hash", self.model_hash)
        _check_hex(what, "config_hash", self.config_hash)
        _check_hex(what, "meta_hash", self.meta_hash)
        _check_int(what, "difficulty", self.difficulty, MAX_DIFFICULTY)
        _check_hex(what, "miner", self.miner)
        _check_int(what, "nonce", self.nonce, MAX_NONCE)

    def prefix_bytes(self) -> bytes:
        """Canonical JSON of every field but the nonce: the part of the hash input that mining
        does not change, so the miner hashes it once and reuses the SHA-256 midstate."""
        fields = self.to_dict()
        del fields["nonce"]
        return canonical_json(fields)

    def hash(self) -> str:
        """The block hash: SHA-256 of :meth:`prefix_bytes` followed by the nonce as 8 big-endian
        bytes."""
        return sha256_hex(self.prefix_bytes() + self.nonce.to_bytes(8, "big"))

    def with_nonce(self, nonce: int) -> BlockHeader:
        """Returns a copy with another nonce."""
        return dataclasses.replace(self, nonce=nonce)

    def signing_payload(self) -> bytes:
        """The bytes a miner signs: :data:`BLOCK_DOMAIN` followed by the raw 32-byte block hash."""
        return BLOCK_DOMAIN + bytes.fromhex(self.hash())

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form, one key per field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, *, what: str = "block header") -> BlockHeader:
        """Builds a header from :meth:`to_dict` output, strictly.

        Raises:
            SerializationError: A key is missing or unknown, or a field has the wrong type or
                value. The message starts with ``what`` and names the field.
        """
        return _record_from_dict(cls, d, what=what)


_BLOCK_KEYS = frozenset({"header", "transactions", "meta", "signature"})


def _json_object_copy(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SerializationError(f"{what} must be a JSON object, got {type(value).__name__}")
    # A round trip through the canonical encoding detaches the copy from the caller's objects
    # and normalises it (tuples become lists) exactly as parsing the stored bytes would.
    normalised = json.loads(canonical_json(dict(value)))
    check_nesting(normalised, what=what, max_depth=MAX_META_DEPTH)
    return normalised


@dataclass(frozen=True)
class Block:
    """A header, the transactions it commits to, free-form metadata, and the miner's signature.

    Attributes:
        header: The hashed header.
        transactions: The round's accepted transactions, in Merkle order.
        meta: A JSON object. For genesis, ``{"members": [...], "miners": [...], "config": {...}}``
            (sorted public keys); for round blocks the round record
            (:mod:`torchchain.protocol.record`). Nested at most :data:`MAX_META_DEPTH` levels.
            Stored as a private copy; treat it as read-only.
        signature: The miner's Ed25519 signature over :meth:`BlockHeader.signing_payload`
            (128 hex characters), or ``""`` while unsigned. The header commits to everything
            else, so the signature covers the whole block.
    """

    header: BlockHeader
    transactions: tuple[Transaction, ...]
    meta: Mapping[str, Any]
    signature: str = ""

    def __post_init__(self) -> None:
        if self.signature != "":
            _check_hex("block", "signature", self.signature, 128)
        if not isinstance(self.header, BlockHeader):
            raise TypeError(f"Block.header must be a BlockHeader, got {type(self.header).__name__}")
        transactions = tuple(self.transactions)
        for tx in transactions:
            if not isinstance(tx, Transaction):
                raise TypeError(f"Block.transactions must hold Transaction objects, got {type(tx).__name__}")
        object.__setattr__(self, "transactions", transactions)
        object.__setattr__(self, "meta", _json_object_copy(self.meta, "block meta"))

    @property
    def hash(self) -> str:
        """The block hash, :meth:`BlockHeader.hash`."""
        return self.header.hash()

    def signed(self, key: SigningKey) -> Block:
        """Returns a copy signed by ``key``.

        Raises:
            ValueError: ``key`` is not the key of the header's ``miner``.
        """
        if key.public_key != self.header.miner:
            raise ValueError(
                f"cannot sign a block mined by {self.header.miner[:12]} with the key of {key.public_key[:12]}"
            )
        return dataclasses.replace(self, signature=key.sign(self.header.signing_payload()))

    def has_valid_signature(self) -> bool:
        """Whether :attr:`signature` is the header miner's valid signature over this block."""
        return verify_signature(self.header.miner, self.header.signing_payload(), self.signature)

    def to_bytes(self) -> bytes:
        """The canonical bytes of the whole block, as stored in a block file."""
        return canonical_json(
            {
                "header": self.header.to_dict(),
                "transactions": [tx.to_dict() for tx in self.transactions],
                "meta": self.meta,
                "signature": self.signature,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str = "block", max_bytes: int = MAX_BLOCK_BYTES) -> Block:
        """Parses a block file, strictly.

        Besides the schema, the input must be exactly the canonical bytes of the parsed block,
        so any change to a block file (even one that leaves valid JSON) is refused.

        Args:
            data: The file's bytes.
            name: A name for errors, usually the file name.
            max_bytes: The largest accepted input.

        Raises:
            SerializationError: Oversized, malformed, wrong keys or types, or not canonical.
                The message starts with ``name`` and names the offending field.
        """
        d = parse_json_object(data, what=name, max_bytes=max_bytes)
        _check_keys(name, d, _BLOCK_KEYS)
        header = BlockHeader.from_dict(d["header"], what=f"{name}: header")
        raw_transactions = d["transactions"]
        if not isinstance(raw_transactions, list):
            raise SerializationError(f"{name}: 'transactions' must be a JSON array")
        transactions = tuple(
            Transaction.from_dict(item, what=f"{name}: transactions[{i}]") for i, item in enumerate(raw_transactions)
        )
        if not isinstance(d["meta"], dict):
            raise SerializationError(f"{name}: 'meta' must be a JSON object")
        if type(d["signature"]) is not str:
            raise SerializationError(f"{name}: 'signature' must be a string")
        block = cls(header=header, transactions=transactions, meta=d["meta"], signature=d["signature"])
        if block.to_bytes() != bytes(data):
            raise SerializationError(f"{name}: not in canonical form (the bytes were altered or re-encoded)")
        return block


def merkle_root(hashes: Sequence[str]) -> str:
    """The Merkle root of a list of SHA-256 hex digests, in the order given.

    Bitcoin's layout: each level hashes the concatenated raw 32-byte digests of pairs, and a
    level of odd length pairs its last digest with itself. One leaf is its own root; the empty
    list has root ``sha256_hex(b"")``. A duplicated last leaf gives the same root as the list
    without it, so validators must refuse duplicate transactions (the ledger does).

    Raises:
        SerializationError: An element is not 64 lowercase hex characters.
    """
    for i, h in enumerate(hashes):
        _check_hex("merkle leaf", str(i), h)
    if not hashes:
        return sha256_hex(b"")
    level = [bytes.fromhex(h) for h in hashes]
    while len(level) > 1:
        if len(level) % 2 == 1:
            level.append(level[-1])
        level = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0].hex()


def meta_hash(meta: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a block's metadata."""
    return sha256_hex(canonical_json(dict(meta)))


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a run configuration."""
    return sha256_hex(canonical_json(dict(config)))


@dataclass(frozen=True)
class GenesisInfo:
    """What a genesis block fixes for the whole chain.

    Attributes:
        members: Client public keys allowed to submit updates, sorted.
        miners: Public keys allowed to mine (and sign) blocks, sorted.
        config: The protocol configuration (a JSON object) every node agrees on.
        difficulty: Proof-of-work difficulty of every block of the chain.
        config_hash: :func:`config_hash` of ``config``, copied into every header.
    """

    members: tuple[str, ...]
    miners: tuple[str, ...]
    config: Mapping[str, Any]
    difficulty: int
    config_hash: str


def _sorted_keys(meta: Mapping[str, Any], field: str) -> tuple[str, ...]:
    keys = meta[field]
    if not isinstance(keys, list) or not keys:
        raise SerializationError(f"genesis meta {field!r} must be a non-empty list of public keys")
    if len(keys) > MAX_MEMBERS:
        raise SerializationError(f"genesis meta {field!r} lists {len(keys)} keys, over the limit of {MAX_MEMBERS}")
    for i, key in enumerate(keys):
        _check_hex("genesis meta", f"{field}[{i}]", key)
    if keys != sorted(set(keys)):
        raise SerializationError(f"genesis meta {field!r} must be sorted and without duplicates")
    return tuple(keys)


def genesis_info(block: Block) -> GenesisInfo:
    """The members, miners and config a genesis block lists, checked.

    Raises:
        SerializationError: The meta is not exactly ``{"members": [...], "miners": [...],
            "config": {...}}``, or a key list is empty, too long, unsorted, repeated or
            malformed.
    """
    meta = block.meta
    _check_keys("genesis meta", dict(meta), _GENESIS_META_KEYS)
    members = _sorted_keys(meta, "members")
    miners = _sorted_keys(meta, "miners")
    if not isinstance(meta["config"], Mapping):
        raise SerializationError("genesis meta 'config' must be a JSON object")
    return GenesisInfo(
        members=members,
        miners=miners,
        config=meta["config"],
        difficulty=block.header.difficulty,
        config_hash=block.header.config_hash,
    )


_GENESIS_META_KEYS = frozenset({"members", "miners", "config"})


def mine_header(header: BlockHeader, *, start_nonce: int = 0, workers: int = 1) -> BlockHeader:
    """``header`` with the first nonce at or above ``start_nonce`` that meets its difficulty
    (:func:`torchchain.chain.pow.mine_nonce` over :meth:`BlockHeader.prefix_bytes`), searched
    by ``workers`` processes; the nonce does not depend on ``workers``."""
    return header.with_nonce(
        mine_nonce(header.prefix_bytes(), header.difficulty, start_nonce=start_nonce, workers=workers)
    )


def _seal(
    header: BlockHeader,
    transactions: tuple[Transaction, ...],
    meta: dict[str, Any],
    key: SigningKey,
    *,
    workers: int = 1,
) -> Block:
    """Checks the block's size, then mines and signs it: a node never mines a block it would refuse."""
    if key.public_key != header.miner:
        raise ValueError("the signing key must be the header's miner")
    unsigned = Block(header=header, transactions=transactions, meta=meta, signature="0" * 128)
    size = len(unsigned.to_bytes()) + 20  # the nonce may take up to 20 digits
    if size > MAX_BLOCK_BYTES:
        raise SerializationError(
            f"the block would be {size} bytes, over the limit of {MAX_BLOCK_BYTES} bytes that every node enforces"
        )
    block = Block(header=mine_header(header, workers=workers), transactions=transactions, meta=meta)
    return block.signed(key)


def _key_list(keys: Sequence[str], what: str) -> list[str]:
    if isinstance(keys, str):
        raise SerializationError(f"{what} must be a sequence of public keys, not one string")
    ordered = sorted(keys)
    if len(set(ordered)) != len(ordered):
        raise SerializationError(f"{what} must not repeat a public key")
    return ordered


def make_genesis(
    *,
    members: Sequence[str],
    config: Mapping[str, Any],
    model_hash: str,
    miner: SigningKey,
    difficulty: int,
    time_ms: int,
    miners: Sequence[str] | None = None,
    workers: int = 1,
) -> Block:
    """Builds, mines and signs the genesis block of a run.

    Args:
        members: Public keys of the clients allowed to submit updates (any order; stored sorted).
        config: The protocol configuration, a JSON object; its hash goes into every header.
        model_hash: SHA-256 of the initial global model blob.
        miner: The key of the node creating the chain; it signs the genesis block.
        difficulty: Proof-of-work difficulty in leading zero bits, for every block of the chain.
        time_ms: Creation time, milliseconds since the Unix epoch.
        miners: Public keys allowed to mine blocks of this chain (any order; stored sorted);
            default: ``miner``'s alone. ``miner`` must be one of them.
        workers: Processes to mine with (:func:`torchchain.chain.pow.mine_nonce`); the block
            does not depend on it.

    Raises:
        SerializationError: A key is malformed or repeated, ``miner`` is not among ``miners``,
            or a field is out of range.
    """
    sorted_members = _key_list(members, "members")
    sorted_miners = _key_list([miner.public_key] if miners is None else miners, "miners")
    if miner.public_key not in sorted_miners:
        raise SerializationError("the genesis miner must be one of the chain's miners")
    config_copy = _json_object_copy(config, "config")
    meta = {"members": sorted_members, "miners": sorted_miners, "config": config_copy}
    _check_keys("genesis meta", meta, _GENESIS_META_KEYS)
    for field in ("members", "miners"):
        _sorted_keys(meta, field)
    header = BlockHeader(
        version=BLOCK_VERSION,
        height=0,
        prev_hash=ZERO_HASH,
        round=0,
        time_ms=time_ms,
        merkle_root=merkle_root([]),
        model_hash=model_hash,
        config_hash=config_hash(config_copy),
        meta_hash=meta_hash(meta),
        difficulty=difficulty,
        miner=miner.public_key,
        nonce=0,
    )
    return _seal(header, (), meta, miner, workers=workers)


def make_block(
    *,
    prev: Block,
    round: int,
    transactions: Sequence[Transaction],
    meta: Mapping[str, Any],
    model_hash: str,
    miner: SigningKey,
    difficulty: int,
    time_ms: int,
    workers: int = 1,
) -> Block:
    """Builds, mines and signs the block that follows ``prev``.

    The Merkle root covers the transactions' hashes in the order given; the config hash is
    copied from ``prev``. Whether the block is acceptable (members, miners, signatures, rounds)
    is the ledger's check, not this function's; its size is checked here, before mining.
    ``workers`` processes mine it (:func:`torchchain.chain.pow.mine_nonce`); the block does not
    depend on their number.

    Raises:
        SerializationError: A field is out of range, ``meta`` is not a JSON object, or the
            block would exceed :data:`MAX_BLOCK_BYTES`.
    """
    transactions = tuple(transactions)
    meta_copy = _json_object_copy(meta, "block meta")
    header = BlockHeader(
        version=BLOCK_VERSION,
        height=prev.header.height + 1,
        prev_hash=prev.hash,
        round=round,
        time_ms=time_ms,
        merkle_root=merkle_root([tx.tx_hash for tx in transactions]),
        model_hash=model_hash,
        config_hash=prev.header.config_hash,
        meta_hash=meta_hash(meta_copy),
        difficulty=difficulty,
        miner=miner.public_key,
        nonce=0,
    )
    return _seal(header, transactions, meta_copy, miner, workers=workers)
