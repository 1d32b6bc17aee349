"""The round record: what a round block's metadata holds, written and read by this module alone.

Schema (every key required, nothing else allowed)::

    {
      "version": 2,
      "outcome": "aggregated" | "kept_parent",
      "trust": {client key: float, ...},          # exactly the block's transactions' clients
      "rejected": {
        "total": int,                             # every refused submission
        "counts": {code: int, ...},               # per reason code, summing to total
        "sample": [{"client", "update_hash", "code", "reason"}, ...]   # at most SAMPLE_SIZE
      },
      "randomness": hex,                          # round_randomness(config hash, round, updates)
      "state": hex | null,                        # blob of the round state after the block
      "reference": hex | null,                    # blob of the server's reference update (FLTrust)
      "privacy": {"epsilon": float} | null        # the largest privacy loss of any member so far
    }

A block of a chain with ``privacy.kind: secagg`` (:mod:`torchchain.protocol.secure_round`) records
version 3: the same keys plus ``secagg``; every other chain's blocks keep version 2 byte for byte::

      "secagg": {
        "transcript": hex,                        # blob: signed keys, share commitments, request, reveals
        "sum": hex | null,                        # blob: the unmasked float64 sum (null when the round failed)
        "dropped": [client key, ...],             # sorted: participants without an accepted masked input
        "rejected": {client key: reason},         # revealed shares refused (replayed by audit)
        "refused": {client key: reason},          # protocol messages the node refused before the transcript
        "failure": {"code", "reason"} | null      # why the round kept its parent's model
      }

The rejection record is bounded whatever arrives (counts per code plus a fixed-size sample,
first by code, then client, then update hash), so a flood of junk submissions can never make
a block too large for the nodes that must store it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torchchain.chain.block import Block, Transaction
from torchchain.errors import LedgerError

__all__ = [
    "MAX_REASON_CHARS",
    "OUTCOMES",
    "RECORD_VERSION",
    "SAMPLE_SIZE",
    "SECAGG_RECORD_VERSION",
    "Rejections",
    "RoundRecord",
    "SecAggRecord",
]

RECORD_VERSION = 2
#: The version of a round record with a ``secagg`` entry.
SECAGG_RECORD_VERSION = 3
#: The most clients a ``secagg`` entry may list (:data:`torchchain.privacy.secagg.MAX_CLIENTS`).
MAX_SECAGG_CLIENTS = 1024
#: How many rejections a block lists in full; the rest are only counted by code.
SAMPLE_SIZE = 32
#: Longest reason string kept.
MAX_REASON_CHARS = 240
#: ``aggregated``: the model is the strategy's aggregate. ``kept_parent``: the aggregate was not
#: finite, so the block keeps its parent's model and the strategy's state.
OUTCOMES = ("aggregated", "kept_parent")

_HEX = re.compile(r"[0-9a-f]{64}")
_CODE = re.compile(r"[a-z_]{1,32}")
_KEYS = frozenset({"version", "outcome", "trust", "rejected", "randomness", "state", "reference", "privacy"})
_SECAGG_KEYS = frozenset({"transcript", "sum", "dropped", "rejected", "refused", "failure"})
_REJECTED_KEYS = frozenset({"total", "counts", "sample"})
_ENTRY_KEYS = ("client", "update_hash", "code", "reason")
_MAX_COUNT = 2**53


@dataclass(frozen=True)
class Rejections:
    """A bounded record of a round's refused submissions.

    Attributes:
        total: How many submissions were refused.
        counts: How many per reason code.
        sample: Up to :data:`SAMPLE_SIZE` refusals in full (``client``, ``update_hash``,
            ``code``, ``reason``), sorted by code, client and update hash.
    """

    total: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)
    sample: tuple[Mapping[str, str], ...] = ()

    @classmethod
    def from_refusals(cls, refusals: Iterable[tuple[Transaction, str, str]]) -> Rejections:
        """Summarise ``(transaction, code, reason)`` refusals; the record is bounded however many."""
        counts: dict[str, int] = {}
        entries = []
        for tx, code, reason in refusals:
            counts[code] = counts.get(code, 0) + 1
            entries.append((code, tx.client, tx.update_hash, reason[:MAX_REASON_CHARS]))
        entries.sort()
        sample = tuple(
            {"client": c, "update_hash": u, "code": code, "reason": r} for code, c, u, r in entries[:SAMPLE_SIZE]
        )
        return cls(total=len(entries), counts=dict(sorted(counts.items())), sample=sample)

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "counts": dict(self.counts), "sample": [dict(e) for e in self.sample]}


@dataclass(frozen=True)
class SecAggRecord:
    """What a secagg round records about its secure aggregation (the ``secagg`` entry).

    Attributes:
        transcript: Blob hash of the round's transcript
            (:class:`~torchchain.protocol.secure_round.Transcript`).
        sum: Blob hash of the unmasked sum (canonical float64 tensors named like the model's
            float tensors), or ``None`` when the round failed before unmasking.
        dropped: Participants whose masked input is missing or was refused, sorted.
        rejected: Client -> why its revealed shares were refused; ``torchchain audit`` recomputes it.
        refused: Client -> why the node refused a protocol message of it (keys, shares, reveal)
            before it could enter the transcript; the node's own account, like the rejected
            submissions.
        failure: ``{"code", "reason"}`` when the round kept its parent's model, else ``None``.
    """

    transcript: str
    sum: str | None
    dropped: tuple[str, ...] = ()
    rejected: Mapping[str, str] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)
    failure: Mapping[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "transcript": self.transcript,
            "sum": self.sum,
            "dropped": list(self.dropped),
            "rejected": dict(sorted(self.rejected.items())),
            "refused": dict(sorted(self.refused.items())),
            "failure": None if self.failure is None else dict(self.failure),
        }

    @classmethod
    def from_dict(cls, raw: Any) -> SecAggRecord:
        """Reads the ``secagg`` entry strictly.

        Raises:
            LedgerError: Wrong keys, hashes, client keys, list order or sizes, or overlong reasons.
        """
        if not isinstance(raw, dict) or set(raw) != _SECAGG_KEYS:
            raise LedgerError(f"round record 'secagg' must have exactly the keys {sorted(_SECAGG_KEYS)}")
        if not isinstance(raw["transcript"], str) or not _HEX.fullmatch(raw["transcript"]):
            raise LedgerError("round record 'secagg.transcript' must be a blob hash (64 lowercase hex characters)")
        if raw["sum"] is not None and (not isinstance(raw["sum"], str) or not _HEX.fullmatch(raw["sum"])):
            raise LedgerError("round record 'secagg.sum' must be null or a blob hash (64 lowercase hex characters)")
        dropped = raw["dropped"]
        if (
            not isinstance(dropped, list)
            or len(dropped) > MAX_SECAGG_CLIENTS
            or not all(isinstance(c, str) and _HEX.fullmatch(c) for c in dropped)
            or dropped != sorted(set(dropped))
        ):
            raise LedgerError(
                f"round record 'secagg.dropped' must be a sorted list of at most {MAX_SECAGG_CLIENTS} distinct client keys"
            )
        reasons = {}
        for key in ("rejected", "refused"):
            value = raw[key]
            if not isinstance(value, dict) or len(value) > MAX_SECAGG_CLIENTS:
                raise LedgerError(
                    f"round record 'secagg.{key}' must map at most {MAX_SECAGG_CLIENTS} client keys to reasons"
                )
            for client, reason in value.items():
                if not _HEX.fullmatch(client) or not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
                    raise LedgerError(
                        f"round record 'secagg.{key}' must map client keys to reasons of at most "
                        f"{MAX_REASON_CHARS} characters"
                    )
            reasons[key] = dict(value)
        failure = raw["failure"]
        if failure is not None:
            if (
                not isinstance(failure, dict)
                or set(failure) != {"code", "reason"}
                or not isinstance(failure["code"], str)
                or not _CODE.fullmatch(failure["code"])
                or not isinstance(failure["reason"], str)
                or len(failure["reason"]) > MAX_REASON_CHARS
            ):
                raise LedgerError(
                    "round record 'secagg.failure' must be null or {\"code\": a-z and _, \"reason\": a short string}"
                )
            failure = dict(failure)
        return cls(
            transcript=raw["transcript"],
            sum=raw["sum"],
            dropped=tuple(dropped),
            rejected=reasons["rejected"],
            refused=reasons["refused"],
            failure=failure,
        )


@dataclass(frozen=True)
class RoundRecord:
    """What a round block records besides its transactions.

    Attributes:
        outcome: One of :data:`OUTCOMES`.
        trust: The weight the strategy gave each accepted client, by public key.
        rejected: The bounded record of refused submissions.
        randomness: The round's seed (:func:`~torchchain.protocol.randomness.round_randomness`).
        state: Blob hash of the strategy state after this block, or ``None`` for a stateless rule.
        reference: Blob hash of the server's reference update, or ``None``.
        epsilon: The largest privacy loss ε of any member after this block (at the genesis
            ``privacy.delta``), or ``None`` when the chain keeps no privacy ledger.
        secagg: The secure aggregation of the round (chains with ``privacy.kind: secagg``), or ``None``.
    """

    outcome: str
    trust: Mapping[str, float]
    rejected: Rejections
    randomness: str
    state: str | None = None
    reference: str | None = None
    epsilon: float | None = None
    secagg: SecAggRecord | None = None

    def to_meta(self) -> dict[str, Any]:
        """The block metadata (the schema in the module docstring)."""
        meta = {
            "version": RECORD_VERSION if self.secagg is None else SECAGG_RECORD_VERSION,
            "outcome": self.outcome,
            "trust": dict(self.trust),
            "rejected": self.rejected.to_dict(),
            "randomness": self.randomness,
            "state": self.state,
            "reference": self.reference,
            "privacy": None if self.epsilon is None else {"epsilon": self.epsilon},
        }
        if self.secagg is not None:
            meta["secagg"] = self.secagg.to_dict()
        return meta

    def blobs(self) -> list[tuple[str, str]]:
        """The blobs this record refers to, as ``(digest, what)``."""
        refs = []
        if self.state is not None:
            refs.append((self.state, "round state blob"))
        if self.reference is not None:
            refs.append((self.reference, "reference update blob"))
        if self.secagg is not None:
            refs.append((self.secagg.transcript, "secagg transcript blob"))
            if self.secagg.sum is not None:
                refs.append((self.secagg.sum, "secagg sum blob"))
        return refs

    @classmethod
    def from_block(cls, block: Block) -> RoundRecord:
        """Read and check the record of a round block, strictly.

        Raises:
            LedgerError: The metadata does not follow the schema (reason only, no ``.block``).
        """
        meta = block.meta
        version = meta.get("version") if isinstance(meta, Mapping) else None
        keys = _KEYS | {"secagg"} if type(version) is int and version == SECAGG_RECORD_VERSION else _KEYS
        if not isinstance(meta, Mapping) or set(meta) != keys:
            found = sorted(meta) if isinstance(meta, Mapping) else type(meta).__name__
            raise LedgerError(f"the round record must have exactly the keys {sorted(keys)}, got {found}")
        if type(version) is not int or version not in (RECORD_VERSION, SECAGG_RECORD_VERSION):
            raise LedgerError(
                f"round record version must be {RECORD_VERSION} (or {SECAGG_RECORD_VERSION} with a secagg entry), "
                f"got {meta['version']!r}"
            )
        if meta["outcome"] not in OUTCOMES:
            raise LedgerError(f"round record 'outcome' must be one of {list(OUTCOMES)}")
        trust = meta["trust"]
        clients = [tx.client for tx in block.transactions]
        if not isinstance(trust, dict) or sorted(trust) != sorted(clients):
            raise LedgerError("round record 'trust' must have one entry per transaction's client, and no other")
        for value in trust.values():
            if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
                raise LedgerError("round record 'trust' weights must be finite non-negative numbers")
        for key in ("randomness",):
            if not isinstance(meta[key], str) or not _HEX.fullmatch(meta[key]):
                raise LedgerError(f"round record {key!r} must be 64 lowercase hex characters")
        for key in ("state", "reference"):
            if meta[key] is not None and (not isinstance(meta[key], str) or not _HEX.fullmatch(meta[key])):
                raise LedgerError(f"round record {key!r} must be null or a blob hash (64 lowercase hex characters)")
        privacy = meta["privacy"]
        epsilon = None
        if privacy is not None:
            if not isinstance(privacy, dict) or set(privacy) != {"epsilon"}:
                raise LedgerError("round record 'privacy' must be null or exactly {\"epsilon\": number}")
            epsilon = privacy["epsilon"]
            if type(epsilon) not in (int, float) or not math.isfinite(epsilon) or epsilon < 0:
                raise LedgerError("round record 'privacy.epsilon' must be a finite non-negative number")
            epsilon = float(epsilon)
        return cls(
            outcome=meta["outcome"],
            trust={k: float(v) for k, v in trust.items()},
            rejected=_read_rejections(meta["rejected"]),
            randomness=meta["randomness"],
            state=meta["state"],
            reference=meta["reference"],
            epsilon=epsilon,
            secagg=SecAggRecord.from_dict(meta["secagg"]) if version == SECAGG_RECORD_VERSION else None,
        )


def _count(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_COUNT:
        raise LedgerError(f"round record {what} must be a count, got {str(value)[:40]!r}")
    return value


def _read_rejections(raw: Any) -> Rejections:
    if not isinstance(raw, dict) or set(raw) != _REJECTED_KEYS:
        raise LedgerError(f"round record 'rejected' must have exactly the keys {sorted(_REJECTED_KEYS)}")
    total = _count(raw["total"], "'rejected.total'")
    counts = raw["counts"]
    if not isinstance(counts, dict) or any(not _CODE.fullmatch(code) for code in counts):
        raise LedgerError("round record 'rejected.counts' must map reason codes (a-z and _) to counts")
    if sum(_count(n, "'rejected.counts'") for n in counts.values()) != total:
        raise LedgerError("round record 'rejected.counts' must sum to 'rejected.total'")
    sample = raw["sample"]
    if not isinstance(sample, list) or len(sample) > min(SAMPLE_SIZE, total):
        raise LedgerError(f"round record 'rejected.sample' must be a list of at most {SAMPLE_SIZE} refusals")
    entries = []
    for i, entry in enumerate(sample):
        if not isinstance(entry, dict) or set(entry) != set(_ENTRY_KEYS) or any(
            not isinstance(entry[k], str) for k in _ENTRY_KEYS
        ):
            raise LedgerError(f"round record 'rejected.sample'[{i}] must have the string fields {list(_ENTRY_KEYS)}")
        if len(entry["reason"]) > MAX_REASON_CHARS or entry["code"] not in counts:
            raise LedgerError(f"round record 'rejected.sample'[{i}] has an uncounted code or an overlong reason")
        if not _HEX.fullmatch(entry["client"]) or not _HEX.fullmatch(entry["update_hash"]):
            raise LedgerError(f"round record 'rejected.sample'[{i}] must name a client key and an update hash in hex")
        entries.append({k: entry[k] for k in _ENTRY_KEYS})
    return Rejections(total=total, counts=dict(counts), sample=tuple(entries))
