"""What a ledger holds, as plain data: the chain's summary and any one block in full.

``torchchain inspect`` prints these; :func:`ledger_summary` and :func:`block_details` return
JSON-able dicts, so a script can read a run's chain without parsing terminal output.

Inspecting is not checking: the ledger is opened with :meth:`~torchchain.chain.ledger.Ledger.open`
(file names, canonical encoding, links, proof of work), without signatures or blobs, and the
trust weights shown are the ones the node recorded. ``torchchain verify`` checks the rest and
``torchchain audit`` recomputes every model and trust weight.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from torchchain.chain.block import Block
from torchchain.chain.ledger import Ledger, block_file_name
from torchchain.errors import LedgerError

__all__ = ["RoundRecord", "block_details", "format_block", "format_summary", "ledger_summary"]

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_REJECTED_KEYS = ("client", "update_hash", "code", "reason")
_SHORT = 12  # hash prefix shown in tables: enough to tell blocks and clients apart by eye


@dataclass(frozen=True)
class RoundRecord:
    """What the mining node recorded in the metadata of one round block.

    Attributes:
        rejected: One entry per refused submission, each with the keys ``client``,
            ``update_hash``, ``code`` and ``reason`` (strings).
        trust: The weight the strategy gave each accepted client, by public key.
        reference: Blob hash of the server's reference update (strategies that need one, such
            as FLTrust), or ``None``.
    """

    rejected: tuple[dict[str, str], ...]
    trust: dict[str, float]
    reference: str | None

    @classmethod
    def from_block(cls, block: Block) -> RoundRecord:
        """Reads and checks the metadata of a round block.

        A missing ``rejected`` or ``trust`` key reads as empty (a block written by another
        tool); a present one must have the documented form.

        Raises:
            LedgerError: The metadata is malformed; ``.block`` names the block file.
        """
        name = block_file_name(block)
        meta = block.meta
        rejected_raw = meta.get("rejected", [])
        if not isinstance(rejected_raw, list):
            raise LedgerError("meta 'rejected' must be a list of rejection records", block=name)
        rejected = []
        for i, entry in enumerate(rejected_raw):
            if not isinstance(entry, dict) or any(not isinstance(entry.get(k), str) for k in _REJECTED_KEYS):
                raise LedgerError(
                    f"meta 'rejected'[{i}] must be an object with string fields {list(_REJECTED_KEYS)}", block=name
                )
            rejected.append({k: entry[k] for k in _REJECTED_KEYS})
        trust_raw = meta.get("trust", {})
        if not isinstance(trust_raw, dict) or any(
            isinstance(w, bool) or not isinstance(w, (int, float)) for w in trust_raw.values()
        ):
            raise LedgerError("meta 'trust' must map client keys to numbers", block=name)
        reference = meta.get("reference")
        if reference is not None and (not isinstance(reference, str) or not _DIGEST_RE.fullmatch(reference)):
            raise LedgerError("meta 'reference' must be a blob hash (64 lowercase hex characters)", block=name)
        return cls(
            rejected=tuple(rejected), trust={k: float(w) for k, w in trust_raw.items()}, reference=reference
        )


def _open(ledger: Ledger | str | os.PathLike[str]) -> Ledger:
    return ledger if isinstance(ledger, Ledger) else Ledger.open(ledger)


def _utc(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def _round_line(block: Block) -> dict[str, Any]:
    record = RoundRecord.from_block(block)
    return {
        "height": block.header.height,
        "round": block.header.round,
        "hash": block.hash,
        "time": _utc(block.header.time_ms),
        "accepted": len(block.transactions),
        "rejected": len(record.rejected),
        "trusted": sum(1 for w in record.trust.values() if w > 0),
        "model_hash": block.header.model_hash,
    }


def ledger_summary(ledger: Ledger | str | os.PathLike[str]) -> dict[str, Any]:
    """The chain at a glance, as a JSON-able dict.

    Args:
        ledger: An open ledger or the path of a ledger folder.

    Returns:
        A dict with ``ledger`` (the folder), ``height``, ``blocks``, ``head`` (the head block's
        hash), ``model_hash`` (the newest global model's hash), ``genesis_time`` (ISO 8601, UTC),
        ``difficulty``, ``members`` (how many keys may submit), ``strategy`` and ``attack`` (the
        recorded config nodes, or ``None``), ``accepted`` and ``rejected`` (totals over all
        rounds) and ``rounds``: one dict per round block with ``height``, ``round``, ``hash``,
        ``time``, ``accepted``, ``rejected``, ``trusted`` (clients the node recorded a positive
        weight for) and ``model_hash``.

    Raises:
        LedgerError: The folder is not a readable ledger or a block's metadata is malformed.
    """
    ledger = _open(ledger)
    blocks = ledger.blocks()
    genesis, head = blocks[0], blocks[-1]
    config = ledger.config
    rounds = [_round_line(block) for block in blocks[1:]]
    return {
        "ledger": str(ledger.path),
        "height": head.header.height,
        "blocks": len(blocks),
        "head": head.hash,
        "model_hash": head.header.model_hash,
        "genesis_time": _utc(genesis.header.time_ms),
        "difficulty": genesis.header.difficulty,
        "members": len(ledger.members),
        "strategy": config.get("strategy"),
        "attack": config.get("attack"),
        "accepted": sum(r["accepted"] for r in rounds),
        "rejected": sum(r["rejected"] for r in rounds),
        "rounds": rounds,
    }


def block_details(ledger: Ledger | str | os.PathLike[str], height: int) -> dict[str, Any]:
    """One block in full, with each client's contribution, as a JSON-able dict.

    Args:
        ledger: An open ledger or the path of a ledger folder.
        height: The block's height, ``0`` (genesis) to the ledger's height.

    Returns:
        A dict with ``height``, ``hash``, ``file`` (the block file's name), ``header`` (every
        header field), ``transactions`` (every field of each accepted transaction plus
        ``trust``, the weight the node recorded for it), ``rejected`` (``client``,
        ``update_hash``, ``code``, ``reason`` of each refused submission) and, when recorded,
        ``reference``; for the genesis block also ``members`` and ``config``.

    Raises:
        LedgerError: No block has that height, or the block's metadata is malformed.
    """
    ledger = _open(ledger)
    blocks = ledger.blocks()
    if isinstance(height, bool) or not isinstance(height, int) or not 0 <= height < len(blocks):
        raise LedgerError(f"no block at height {height!r}: this ledger holds heights 0 to {len(blocks) - 1}")
    block = blocks[height]
    details: dict[str, Any] = {
        "height": block.header.height,
        "hash": block.hash,
        "file": block_file_name(block),
        "header": block.header.to_dict(),
    }
    if height == 0:
        details.update(transactions=[], rejected=[], members=list(ledger.members), config=ledger.config)
        return details
    record = RoundRecord.from_block(block)
    details["transactions"] = [{**tx.to_dict(), "trust": record.trust.get(tx.client)} for tx in block.transactions]
    details["rejected"] = [dict(entry) for entry in record.rejected]
    if record.reference is not None:
        details["reference"] = record.reference
    return details


# -- text for a terminal ------------------------------------------------------------------------


def _printable(text: Any) -> str:
    # Ledger strings come from whoever wrote the ledger: escape control characters so that a
    # crafted reason cannot drive the terminal.
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


def _target(node: Any) -> str:
    """``_target_`` and arguments of a recorded config node, on one line."""
    if not isinstance(node, Mapping):
        return "not recorded"
    args = ", ".join(f"{k}={v!r}" for k, v in node.items() if k != "_target_")
    return _printable(f"{node.get('_target_', '?')}({args})")


def _clock(iso: str) -> str:
    # "2026-11-25T10:00:00.123+00:00" -> "2026-11-25 10:00:00 UTC"
    return iso[:19].replace("T", " ") + " UTC"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The text ``torchchain inspect`` prints for :func:`ledger_summary`'s dict."""
    lines = [
        f"ledger     {summary['ledger']}",
        f"height     {summary['height']} ({summary['blocks']} blocks), head {summary['head']}",
        f"model      {summary['model_hash']}",
        f"genesis    {_clock(summary['genesis_time'])}, difficulty {summary['difficulty']} bits, "
        f"{summary['members']} members",
        f"strategy   {_target(summary['strategy'])}",
        f"attack     {_target(summary['attack'])}",
        f"updates    {summary['accepted']} accepted, {summary['rejected']} rejected",
    ]
    if summary["rounds"]:
        lines += ["", f"{'round':>5}  {'block':<{_SHORT}}  {'time (UTC)':<19}  accepted  rejected  trusted  model"]
        for r in summary["rounds"]:
            lines.append(
                f"{r['round']:>5}  {r['hash'][:_SHORT]}  {_clock(r['time'])[:19]}  {r['accepted']:>8}  "
                f"{r['rejected']:>8}  {str(r['trusted']) + '/' + str(r['accepted']):>7}  {r['model_hash'][:_SHORT]}"
            )
    return "\n".join(lines)


def format_block(details: Mapping[str, Any]) -> str:
    """The text ``torchchain inspect --block N`` prints for :func:`block_details`'s dict."""
    lines = [f"block {details['height']}  {details['hash']}  ({details['file']})"]
    lines += [f"  {key:<12} {value}" for key, value in details["header"].items()]
    if "members" in details:
        lines.append(f"members ({len(details['members'])}):")
        lines += [f"  {key}" for key in details["members"]]
        lines.append(f"strategy: {_target(details['config'].get('strategy'))}")
        return "\n".join(lines)
    if "reference" in details:
        lines.append(f"reference update: {details['reference']}")
    txs = details["transactions"]
    lines.append(f"transactions ({len(txs)} accepted):")
    if txs:
        lines.append(f"  {'client':<{_SHORT}}  {'samples':>8}  {'update':<{_SHORT}}  trust")
        for tx in txs:
            trust = "-" if tx["trust"] is None else f"{tx['trust']:.4f}"
            lines.append(
                f"  {tx['client'][:_SHORT]}  {tx['num_samples']:>8}  {tx['update_hash'][:_SHORT]}  {trust}"
            )
    lines.append(f"rejected ({len(details['rejected'])}):")
    for entry in details["rejected"]:
        lines.append(
            f"  {_printable(entry['client'][:_SHORT])}  update {_printable(entry['update_hash'][:_SHORT])}  "
            f"{_printable(entry['code'])}: {_printable(entry['reason'])}"
        )
    return "\n".join(lines)
