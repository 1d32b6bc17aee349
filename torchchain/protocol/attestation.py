"""Attestations: each peer's signed verdict on a proposed block, and how a majority is counted.

When every participant is a peer (:mod:`torchchain.runtime.peer`), a block is committed only
when a strict majority of the peers the genesis block lists as ``miners`` checked it on their
own and signed an :class:`Attestation` accepting it. The attestations of a committed block are
stored beside it (``attestations/<block hash>.json``, see
:meth:`~torchchain.chain.ledger.Ledger.put_attestations`), so ``torchchain audit`` recounts
them (:func:`count_attestations`, :func:`committed`).

They need no hash chaining: each one is signed by a genesis peer key over domain-tagged bytes
(:data:`ATTESTATION_DOMAIN`), so nobody can forge one, and a deleted one shows up as a missing
majority.

One attestation, as canonical JSON (every key required, nothing else allowed)::

    {"block_hash": hex64, "height": int, "peer": hex64, "reason": str,
     "signature": hex128, "verdict": "accept" | "reject"}

``reason`` is empty for ``accept`` and at most :data:`MAX_REASON_CHARS` printable ASCII
characters for ``reject``. A peer that received no block (the proposer withheld it, or sent
bytes that are not a block) rejects :data:`~torchchain.chain.block.ZERO_HASH`.

A block's attestation set, as stored::

    {"attestations": [attestation, ...], "block_hash": hex64, "version": 1}

sorted by peer key, one entry per peer, every entry about that block.

Pure functions over bytes, no I/O.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torchchain.chain.block import ZERO_HASH
from torchchain.chain.crypto import SigningKey, verify_signature
from torchchain.chain.encoding import canonical_json, parse_json_object
from torchchain.errors import LedgerError, SerializationError

__all__ = [
    "ATTESTATION_DOMAIN",
    "MAX_ATTESTATION_BYTES",
    "MAX_REASON_CHARS",
    "VERDICTS",
    "Attestation",
    "AttestationError",
    "Tally",
    "attestation_set_bound",
    "check_attestation_set",
    "clip_reason",
    "committed",
    "count_attestations",
    "decode_attestation_set",
    "encode_attestation_set",
]

ATTESTATION_DOMAIN = b"torchchain/attestation/v1\x00"
"""Prefix of the bytes a peer signs, so an attestation signature is never a valid signature of
a block, a transaction or anything else."""
MAX_REASON_CHARS = 240
"""The longest reason an attestation carries."""
MAX_ATTESTATION_BYTES = 1024
"""The largest encoded attestation: the fixed fields take under 400 bytes, a reason at most
twice :data:`MAX_REASON_CHARS` (``"`` and ``\\`` are escaped)."""
VERDICTS = ("accept", "reject")
SET_VERSION = 1

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_KEYS = frozenset({"block_hash", "height", "peer", "reason", "signature", "verdict"})
_SET_KEYS = frozenset({"attestations", "block_hash", "version"})
_MAX_HEIGHT = 2**63 - 1


class AttestationError(LedgerError):
    """A committed block's attestations are missing, malformed, forged, or fall short of a
    strict majority of the genesis peers.

    Attributes:
        accepts: Valid accepting attestations counted (0 when none could be read).
        peers: Number of genesis peers.
    """

    def __init__(self, reason: str, *, accepts: int = 0, peers: int = 0, block: str | None = None) -> None:
        super().__init__(reason, block=block)
        self.accepts = accepts
        self.peers = peers


def clip_reason(text: str) -> str:
    """``text`` as an attestation reason: printable ASCII (others become ``?``), at most
    :data:`MAX_REASON_CHARS` characters (a longer text is cut and ends with ``...``)."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in str(text).replace("\u2026", "..."))
    if len(cleaned) > MAX_REASON_CHARS:
        cleaned = cleaned[: MAX_REASON_CHARS - 3] + "..."
    return cleaned


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Attestation:
    """One peer's signed verdict on one block.

    Attributes:
        peer: The attesting peer's public key (64 hex characters), one of the genesis miners.
        height: The height of the block attested.
        block_hash: The hash of the block the peer received (:data:`ZERO_HASH` when it received
            none).
        verdict: ``"accept"`` or ``"reject"``.
        reason: Why the peer rejects (empty for ``accept``).
        signature: The peer's Ed25519 signature over :meth:`signing_payload`, or ``""`` while
            unsigned.

    Raises:
        SerializationError: A field has the wrong type or value.
    """

    peer: str
    height: int
    block_hash: str
    verdict: str
    reason: str = ""
    signature: str = ""

    def __post_init__(self) -> None:
        for name in ("peer", "block_hash"):
            value = getattr(self, name)
            if type(value) is not str or not _HEX64.fullmatch(value):
                raise SerializationError(f"attestation field {name!r} must be 64 lowercase hex characters, got {_show(value)}")
        if type(self.height) is not int or not 0 <= self.height <= _MAX_HEIGHT:
            raise SerializationError(f"attestation field 'height' must be an integer in [0, 2**63 - 1], got {_show(self.height)}")
        if type(self.verdict) is not str or self.verdict not in VERDICTS:
            raise SerializationError(f"attestation field 'verdict' must be 'accept' or 'reject', got {_show(self.verdict)}")
        if type(self.reason) is not str or len(self.reason) > MAX_REASON_CHARS or not _PRINTABLE.fullmatch(self.reason):
            raise SerializationError(
                f"attestation field 'reason' must be at most {MAX_REASON_CHARS} printable ASCII characters, "
                f"got {_show(self.reason)}"
            )
        if self.verdict == "accept" and self.reason:
            raise SerializationError("an accepting attestation carries no reason")
        if self.verdict == "accept" and self.block_hash == ZERO_HASH:
            raise SerializationError("an attestation cannot accept the zero hash (no block)")
        if type(self.signature) is not str or (self.signature and not _HEX128.fullmatch(self.signature)):
            raise SerializationError(
                f"attestation field 'signature' must be 128 lowercase hex characters, got {_show(self.signature)}"
            )

    @property
    def accepts(self) -> bool:
        return self.verdict == "accept"

    def signing_payload(self) -> bytes:
        """The bytes the peer signs: :data:`ATTESTATION_DOMAIN`, then the canonical JSON of
        every field but the signature."""
        fields = self.to_dict()
        del fields["signature"]
        return ATTESTATION_DOMAIN + canonical_json(fields)

    def signed(self, key: SigningKey) -> Attestation:
        """A copy signed by ``key``.

        Raises:
            ValueError: ``key`` is not the key of :attr:`peer`.
        """
        if key.public_key != self.peer:
            raise ValueError(f"cannot sign an attestation of peer {self.peer[:12]} with the key of {key.public_key[:12]}")
        return dataclasses.replace(self, signature=key.sign(self.signing_payload()))

    def has_valid_signature(self) -> bool:
        """Whether :attr:`signature` is :attr:`peer`'s valid signature over this attestation."""
        return bool(self.signature) and verify_signature(self.peer, self.signing_payload(), self.signature)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_bytes(self) -> bytes:
        """The canonical JSON of the whole attestation, signature included."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any, *, what: str = "attestation") -> Attestation:
        """An attestation from :meth:`to_dict` output, strictly, its signature checked.

        Raises:
            SerializationError: A key is missing or unknown, a field is malformed, or the
                signature is missing or not ``peer``'s over these fields. The message starts
                with ``what``.
        """
        if not isinstance(d, dict):
            raise SerializationError(f"{what}: expected a JSON object, got {type(d).__name__}")
        if d.keys() != _KEYS:
            raise SerializationError(
                f"{what}: missing keys {sorted(_KEYS - d.keys())}, unknown keys {sorted(d.keys() - _KEYS)[:8]}"
            )
        try:
            attestation = cls(**d)
        except SerializationError as exc:
            raise SerializationError(f"{what}: {exc}") from None
        if not attestation.has_valid_signature():
            raise SerializationError(f"{what}: signature does not match peer {attestation.peer[:12]}")
        return attestation

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_ATTESTATION_BYTES, what: str = "attestation") -> Attestation:
        """Parses one attestation as a peer sent it: bounded, strict, canonical, signature checked.

        Raises:
            SerializationError: Over ``max_bytes`` (checked first), not canonical JSON of
                exactly these keys, a malformed field, or a bad signature.
        """
        d = parse_json_object(data, what=what, max_bytes=max_bytes)
        attestation = cls.from_dict(d, what=what)
        if attestation.to_bytes() != bytes(data):
            raise SerializationError(f"{what}: not in canonical form")
        return attestation


@dataclass(frozen=True)
class Tally:
    """The count of a block's attestations.

    Attributes:
        accepts: Genesis peers that validly accepted the block (each counted once).
        rejects: Genesis peers that validly rejected it.
        invalid: ``(peer, reason)`` of every attestation left out of both counts: from a key
            that is not a genesis peer, about another block, or from a peer that both
            accepted and rejected this block (equivocation).
        accepted_by: The accepting peers' keys, sorted.
    """

    accepts: int
    rejects: int
    invalid: tuple[tuple[str, str], ...]
    accepted_by: tuple[str, ...] = ()


def count_attestations(attestations: Iterable[Attestation], peers: Sequence[str], block_hash: str) -> Tally:
    """Count the verdicts on ``block_hash`` of the genesis ``peers``.

    Only :class:`Attestation` objects count (parse them with :meth:`Attestation.from_bytes` or
    :meth:`~Attestation.from_dict`, which check signatures); the same verdict repeated counts
    once; a peer that signed both verdicts on this block is counted as neither and reported.
    """
    members = frozenset(peers)
    verdicts: dict[str, set[str]] = {}
    invalid: list[tuple[str, str]] = []
    for attestation in attestations:
        if attestation.peer not in members:
            invalid.append((attestation.peer, "not a peer the genesis block lists"))
        elif attestation.block_hash != block_hash:
            invalid.append((attestation.peer, f"attests block {attestation.block_hash[:12]}, not {block_hash[:12]}"))
        else:
            verdicts.setdefault(attestation.peer, set()).add(attestation.verdict)
    accepted, rejected = [], []
    for peer in sorted(verdicts):
        seen = verdicts[peer]
        if len(seen) > 1:
            invalid.append((peer, f"equivocation: signed both accept and reject for block {block_hash[:12]}"))
        elif "accept" in seen:
            accepted.append(peer)
        else:
            rejected.append(peer)
    return Tally(accepts=len(accepted), rejects=len(rejected), invalid=tuple(invalid), accepted_by=tuple(accepted))


def committed(tally: Tally, n_peers: int) -> bool:
    """Whether ``tally`` holds a strict majority of ``n_peers`` accepting peers."""
    return tally.accepts * 2 > n_peers


def attestation_set_bound(n_peers: int) -> int:
    """The largest stored attestation set of a chain with ``n_peers`` peers, in bytes."""
    return n_peers * (MAX_ATTESTATION_BYTES + 1) + 256


def encode_attestation_set(block_hash: str, attestations: Iterable[Attestation]) -> bytes:
    """The stored form of a block's attestations: canonical JSON, sorted by peer key.

    Raises:
        SerializationError: An attestation is about another block, unsigned, or a peer appears
            twice.
    """
    ordered = sorted(attestations, key=lambda a: a.peer)
    peers = [a.peer for a in ordered]
    if len(set(peers)) != len(peers):
        raise SerializationError("an attestation set holds one attestation per peer")
    for a in ordered:
        if a.block_hash != block_hash or not a.signature:
            raise SerializationError(f"the attestation of peer {a.peer[:12]} is not a signed attestation of {block_hash[:12]}")
    return canonical_json({"attestations": [a.to_dict() for a in ordered], "block_hash": block_hash, "version": SET_VERSION})


def decode_attestation_set(data: bytes, *, block_hash: str, height: int, max_bytes: int) -> tuple[Attestation, ...]:
    """Parse a stored attestation set strictly: every entry well-formed, validly signed, about
    block ``block_hash`` at ``height``, one per peer, sorted by peer, canonical bytes.

    Raises:
        SerializationError: The first problem, naming the entry.
    """
    what = f"attestations of block {block_hash[:12]}"
    d = parse_json_object(data, what=what, max_bytes=max_bytes)
    if d.keys() != _SET_KEYS:
        raise SerializationError(f"{what}: missing keys {sorted(_SET_KEYS - d.keys())}, unknown keys {sorted(d.keys() - _SET_KEYS)[:8]}")
    if d["version"] != SET_VERSION or type(d["version"]) is not int:
        raise SerializationError(f"{what}: version must be {SET_VERSION}, got {_show(d['version'])}")
    if d["block_hash"] != block_hash:
        raise SerializationError(f"{what}: the set names block {_show(d['block_hash'])}")
    entries = d["attestations"]
    if not isinstance(entries, list):
        raise SerializationError(f"{what}: 'attestations' must be a JSON array")
    parsed = []
    for i, entry in enumerate(entries):
        attestation = Attestation.from_dict(entry, what=f"{what}: entry {i}")
        if attestation.block_hash != block_hash or attestation.height != height:
            raise SerializationError(
                f"{what}: entry {i} (peer {attestation.peer[:12]}) attests block {attestation.block_hash[:12]} "
                f"at height {attestation.height}, not this block at height {height}"
            )
        parsed.append(attestation)
    try:
        canonical = encode_attestation_set(block_hash, parsed)
    except SerializationError as exc:
        raise SerializationError(f"{what}: {exc}") from None
    if canonical != bytes(data):
        raise SerializationError(f"{what}: not in canonical form (sorted by peer key)")
    return tuple(parsed)


def check_attestation_set(data: bytes, *, block_hash: str, height: int, peers: Sequence[str], name: str | None = None) -> Tally:
    """Check a committed block's attestation set as the audit does: every entry well-formed,
    validly signed and counted, and the accepting peers a strict majority of ``peers``.

    Args:
        data: The set's bytes (stored, or received from another peer).
        block_hash: The block's hash.
        height: The block's height.
        peers: The genesis peers (``miners``).
        name: How errors name the block (its file name).

    Raises:
        AttestationError: The set is malformed, holds an entry that is not counted, or falls
            short of a strict majority.
    """
    bound = attestation_set_bound(len(peers))
    try:
        attestations = decode_attestation_set(data, block_hash=block_hash, height=height, max_bytes=bound)
    except SerializationError as exc:
        raise AttestationError(f"the stored attestations are not valid: {exc}", peers=len(peers), block=name) from None
    tally = count_attestations(attestations, peers, block_hash)
    if tally.invalid:
        peer, reason = tally.invalid[0]
        raise AttestationError(
            f"the attestation of {peer[:12]} is not counted ({reason})", accepts=tally.accepts, peers=len(peers), block=name
        )
    if not committed(tally, len(peers)):
        raise AttestationError(
            f"only {tally.accepts} of the {len(peers)} peers accepted the block; committing it needs a strict "
            f"majority ({len(peers) // 2 + 1})",
            accepts=tally.accepts, peers=len(peers), block=name,
        )
    return tally
