"""Votes on updates (``validation=vote``): every peer scores each update of a round on its own
held-out data and signs a ballot; an update enters the block only with a strict majority of
approvals.

After Chen et al. 2021, "Robust Blockchained Federated Learning with Model Validation and
Proof-of-Stake Inspired Consensus" (VBFL): validators score every update on their own data and
vote; here every peer (the genesis block's ``miners``) is a validator, a peer approves an update
when it does not raise its validation loss by more than ``validation.threshold``, and the votes
filter the round's updates before the strategy aggregates them, so they compose with any rule.

One ballot, as canonical JSON (every key required, nothing else allowed)::

    {"approve": [tx hash, ...], "base_hash": hex64, "height": int, "peer": hex64,
     "reject": [tx hash, ...], "signature": hex128}

``approve`` and ``reject`` are sorted, disjoint lists of transaction hashes; the ballot is about
the updates that would form block ``height`` on top of ``base_hash``. The signature covers
:data:`VOTE_DOMAIN` and every other field. A committed block's ballots are stored beside it
(``votes/<block hash>.json``)::

    {"ballots": [ballot, ...], "block_hash": hex64, "version": 1}

sorted by peer key, one ballot per peer that sent a valid one. :func:`check_vote_set` is the
audit's check: every transaction of the block holds approvals from a strict majority of the
peers.

Pure functions over bytes, no I/O.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torchchain.chain.crypto import SigningKey, verify_signature
from torchchain.chain.encoding import canonical_json, parse_json_object
from torchchain.errors import ConfigError, LedgerError, SerializationError

__all__ = [
    "VOTE_DOMAIN",
    "Ballot",
    "VoteError",
    "VoteRules",
    "approved_by_majority",
    "ballot_bound",
    "check_vote_set",
    "decode_vote_set",
    "encode_vote_set",
    "vote_set_bound",
]

VOTE_DOMAIN = b"torchchain/vote/v1\x00"
SET_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_KEYS = frozenset({"approve", "base_hash", "height", "peer", "reject", "signature"})
_SET_KEYS = frozenset({"ballots", "block_hash", "version"})
_MAX_HEIGHT = 2**63 - 1
_MAX_THRESHOLD = 1e6


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class VoteError(LedgerError):
    """A committed block's votes are missing, malformed, forged, or a transaction of the block
    lacks a strict majority of approvals."""


@dataclass(frozen=True)
class VoteRules:
    """The ``validation`` section of a chain's config.

    Attributes:
        kind: ``"none"`` (no votes) or ``"vote"``.
        threshold: A peer approves an update when its validation loss after the update is at
            most the loss before it plus ``threshold``.
    """

    kind: str = "none"
    threshold: float = 0.0

    @property
    def votes(self) -> bool:
        return self.kind == "vote"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VoteRules:
        """The rules of a genesis config (no ``validation`` section: no votes).

        Raises:
            ConfigError: An unknown kind, or a threshold that is not a finite number >= 0.
        """
        section = config.get("validation")
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ConfigError("validation must be a config group (validation=none | vote)")
        kind = section.get("kind", "none")
        if kind not in ("none", "vote"):
            raise ConfigError(f"validation.kind must be none or vote, got {_show(kind)}")
        threshold = section.get("threshold", 0.0)
        if (
            isinstance(threshold, bool) or not isinstance(threshold, (int, float))
            or not 0.0 <= threshold <= _MAX_THRESHOLD
        ):
            raise ConfigError(
                f"validation.threshold must be a number in [0, {_MAX_THRESHOLD:g}] (the loss increase a peer "
                f"tolerates), got {_show(threshold)}"
            )
        return cls(kind=kind, threshold=float(threshold))


@dataclass(frozen=True)
class Ballot:
    """One peer's signed votes on the updates of one round.

    Attributes:
        peer: The voting peer's public key.
        height: The height of the block the updates are for.
        base_hash: The block they were computed against (the new block's parent).
        approve: Hashes of the transactions it approves, sorted.
        reject: Hashes of the transactions it rejects, sorted.
        signature: The peer's signature over :meth:`signing_payload`, or ``""`` while unsigned.

    Raises:
        SerializationError: A field has the wrong type or value.
    """

    peer: str
    height: int
    base_hash: str
    approve: tuple[str, ...] = ()
    reject: tuple[str, ...] = ()
    signature: str = ""

    def __post_init__(self) -> None:
        for name in ("peer", "base_hash"):
            value = getattr(self, name)
            if type(value) is not str or not _HEX64.fullmatch(value):
                raise SerializationError(f"ballot field {name!r} must be 64 lowercase hex characters, got {_show(value)}")
        if type(self.height) is not int or not 1 <= self.height <= _MAX_HEIGHT:
            raise SerializationError(f"ballot field 'height' must be an integer in [1, 2**63 - 1], got {_show(self.height)}")
        for name in ("approve", "reject"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or any(type(h) is not str or not _HEX64.fullmatch(h) for h in value):
                raise SerializationError(f"ballot field {name!r} must be a list of transaction hashes")
            if list(value) != sorted(set(value)):
                raise SerializationError(f"ballot field {name!r} must be sorted, without repeats")
            object.__setattr__(self, name, tuple(value))
        if set(self.approve) & set(self.reject):
            raise SerializationError("a ballot cannot both approve and reject a transaction")
        if type(self.signature) is not str or (self.signature and not _HEX128.fullmatch(self.signature)):
            raise SerializationError(f"ballot field 'signature' must be 128 lowercase hex characters, got {_show(self.signature)}")

    def signing_payload(self) -> bytes:
        """:data:`VOTE_DOMAIN`, then the canonical JSON of every field but the signature."""
        fields = self.to_dict()
        del fields["signature"]
        return VOTE_DOMAIN + canonical_json(fields)

    def signed(self, key: SigningKey) -> Ballot:
        """A copy signed by ``key`` (which must be :attr:`peer`'s)."""
        if key.public_key != self.peer:
            raise ValueError(f"cannot sign a ballot of peer {self.peer[:12]} with the key of {key.public_key[:12]}")
        return dataclasses.replace(self, signature=key.sign(self.signing_payload()))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["approve"], d["reject"] = list(self.approve), list(self.reject)
        return d

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any, *, what: str = "ballot") -> Ballot:
        """A ballot from :meth:`to_dict` output, strictly, its signature checked.

        Raises:
            SerializationError: A key is missing or unknown, a field is malformed, or the
                signature is not ``peer``'s over these fields.
        """
        if not isinstance(d, dict):
            raise SerializationError(f"{what}: expected a JSON object, got {type(d).__name__}")
        if d.keys() != _KEYS:
            raise SerializationError(f"{what}: missing keys {sorted(_KEYS - d.keys())}, unknown keys {sorted(d.keys() - _KEYS)[:8]}")
        try:
            ballot = cls(**d)
        except SerializationError as exc:
            raise SerializationError(f"{what}: {exc}") from None
        if not ballot.signature or not verify_signature(ballot.peer, ballot.signing_payload(), ballot.signature):
            raise SerializationError(f"{what}: signature does not match peer {ballot.peer[:12]}")
        return ballot

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int, what: str = "ballot") -> Ballot:
        """Parses one ballot as a peer sent it: bounded, strict, canonical, signature checked."""
        ballot = cls.from_dict(parse_json_object(data, what=what, max_bytes=max_bytes), what=what)
        if ballot.to_bytes() != bytes(data):
            raise SerializationError(f"{what}: not in canonical form")
        return ballot


def ballot_bound(entries: int) -> int:
    """The largest ballot on at most ``entries`` transactions, in bytes."""
    return 512 + entries * 67


def vote_set_bound(n_peers: int, entries: int) -> int:
    """The largest stored vote set of ``n_peers`` ballots on at most ``entries`` transactions."""
    return 256 + n_peers * (ballot_bound(entries) + 1)


def approved_by_majority(ballots: Iterable[Ballot], peers: Sequence[str], tx_hashes: Iterable[str]) -> set[str]:
    """The transactions among ``tx_hashes`` that a strict majority of ``peers`` approve (each
    peer counted once; ballots of keys that are not peers count for nothing)."""
    members = frozenset(peers)
    approvals: dict[str, set[str]] = {}
    for ballot in ballots:
        if ballot.peer in members:
            for tx_hash in ballot.approve:
                approvals.setdefault(tx_hash, set()).add(ballot.peer)
    return {h for h in tx_hashes if 2 * len(approvals.get(h, ())) > len(members)}


def encode_vote_set(block_hash: str, ballots: Iterable[Ballot]) -> bytes:
    """The stored form of a block's ballots: canonical JSON, sorted by peer key.

    Raises:
        SerializationError: A ballot is unsigned, or a peer appears twice.
    """
    ordered = sorted(ballots, key=lambda b: b.peer)
    if len({b.peer for b in ordered}) != len(ordered) or any(not b.signature for b in ordered):
        raise SerializationError("a vote set holds one signed ballot per peer")
    return canonical_json({"ballots": [b.to_dict() for b in ordered], "block_hash": block_hash, "version": SET_VERSION})


def decode_vote_set(data: bytes, *, block_hash: str, max_bytes: int) -> tuple[Ballot, ...]:
    """Parse a stored vote set strictly: every ballot well-formed and validly signed, one per
    peer, sorted by peer, canonical bytes.

    Raises:
        SerializationError: The first problem, naming the entry.
    """
    what = f"votes of block {block_hash[:12]}"
    d = parse_json_object(data, what=what, max_bytes=max_bytes)
    if d.keys() != _SET_KEYS:
        raise SerializationError(f"{what}: missing keys {sorted(_SET_KEYS - d.keys())}, unknown keys {sorted(d.keys() - _SET_KEYS)[:8]}")
    if type(d["version"]) is not int or d["version"] != SET_VERSION:
        raise SerializationError(f"{what}: version must be {SET_VERSION}, got {_show(d['version'])}")
    if d["block_hash"] != block_hash:
        raise SerializationError(f"{what}: the set names block {_show(d['block_hash'])}")
    if not isinstance(d["ballots"], list):
        raise SerializationError(f"{what}: 'ballots' must be a JSON array")
    ballots = tuple(Ballot.from_dict(entry, what=f"{what}: entry {i}") for i, entry in enumerate(d["ballots"]))
    try:
        canonical = encode_vote_set(block_hash, ballots)
    except SerializationError as exc:
        raise SerializationError(f"{what}: {exc}") from None
    if canonical != bytes(data):
        raise SerializationError(f"{what}: not in canonical form (sorted by peer key)")
    return ballots


def check_vote_set(
    data: bytes, *, block_hash: str, height: int, base_hash: str, tx_hashes: Sequence[str], peers: Sequence[str],
    members: int, name: str | None = None,
) -> None:
    """Check a committed block's votes as the audit does: every ballot well-formed, validly
    signed by a peer, about this height and parent, and every transaction of the block approved
    by a strict majority of ``peers``.

    Args:
        members: The chain's number of clients (a ballot names at most one transaction each).

    Raises:
        VoteError: The first problem; ``.block`` is ``name``.
    """
    try:
        ballots = decode_vote_set(data, block_hash=block_hash, max_bytes=vote_set_bound(len(peers), members))
    except SerializationError as exc:
        raise VoteError(f"the stored votes are not valid: {exc}", block=name) from None
    for ballot in ballots:
        if ballot.peer not in peers:
            raise VoteError(f"a ballot is signed by {ballot.peer[:12]}, not a peer the genesis block lists", block=name)
        if ballot.height != height or ballot.base_hash != base_hash:
            raise VoteError(
                f"the ballot of {ballot.peer[:12]} is about height {ballot.height} on {ballot.base_hash[:12]}, "
                f"not this block's",
                block=name,
            )
    approved = approved_by_majority(ballots, peers, tx_hashes)
    short = [h for h in tx_hashes if h not in approved]
    if short:
        raise VoteError(
            f"transaction {short[0][:12]} entered the block without approvals from a strict majority of the "
            f"{len(peers)} peers ({len(short)} such transaction(s))",
            block=name,
        )
