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
      "randomness": hex,                          # round_randomness(prev_hash, merkle_root)
      "state": hex | null,                        # blob of the round state after the block
      "reference": hex | null,                    # blob of the server's reference update (FLTrust)
      "privacy": {"epsilon": float} | null        # the largest privacy loss of any member so far
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

__all__ = ["MAX_REASON_CHARS", "OUTCOMES", "RECORD_VERSION", "SAMPLE_SIZE", "Rejections", "RoundRecord"]

RECORD_VERSION = 2
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
    """

    outcome: str
    trust: Mapping[str, float]
    rejected: Rejections
    randomness: str
    state: str | None = None
    reference: str | None = None
    epsilon: float | None = None

    def to_meta(self) -> dict[str, Any]:
        """The block metadata (the schema in the module docstring)."""
        return {
            "version": RECORD_VERSION,
            "outcome": self.outcome,
            "trust": dict(self.trust),
            "rejected": self.rejected.to_dict(),
            "randomness": self.randomness,
            "state": self.state,
            "reference": self.reference,
            "privacy": None if self.epsilon is None else {"epsilon": self.epsilon},
        }

    def blobs(self) -> list[tuple[str, str]]:
        """The blobs this record refers to, as ``(digest, what)``."""
        refs = []
        if self.state is not None:
            refs.append((self.state, "round state blob"))
        if self.reference is not None:
            refs.append((self.reference, "reference update blob"))
        return refs

    @classmethod
    def from_block(cls, block: Block) -> RoundRecord:
        """Read and check the record of a round block, strictly.

        Raises:
            LedgerError: The metadata does not follow the schema (reason only, no ``.block``).
        """
        meta = block.meta
        if not isinstance(meta, Mapping) or set(meta) != _KEYS:
            found = sorted(meta) if isinstance(meta, Mapping) else type(meta).__name__
            raise LedgerError(f"the round record must have exactly the keys {sorted(_KEYS)}, got {found}")
        if type(meta["version"]) is not int or meta["version"] != RECORD_VERSION:
            raise LedgerError(f"round record version must be {RECORD_VERSION}, got {meta['version']!r}")
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
