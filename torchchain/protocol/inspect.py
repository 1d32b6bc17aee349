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
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from torchchain.chain.block import Block
from torchchain.chain.ledger import Ledger, block_file_name
from torchchain.errors import LedgerError
from torchchain.protocol.record import RoundRecord

__all__ = ["block_details", "format_block", "format_summary", "ledger_summary"]

_SHORT = 12  # hash prefix shown in tables: enough to tell blocks and clients apart by eye


def _open(ledger: Ledger | str | os.PathLike[str]) -> Ledger:
    return ledger if isinstance(ledger, Ledger) else Ledger.open(ledger)


def _utc(time_ms: int) -> str:
    # Headers bound time_ms to the year 9999, so this never overflows.
    return datetime.fromtimestamp(time_ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def _record(block: Block) -> RoundRecord:
    try:
        return RoundRecord.from_block(block)
    except LedgerError as exc:
        raise LedgerError(exc.reason, block=block_file_name(block)) from None


def _round_line(block: Block) -> dict[str, Any]:
    record = _record(block)
    return {
        "height": block.header.height,
        "round": block.header.round,
        "hash": block.hash,
        "time": _utc(block.header.time_ms),
        "accepted": len(block.transactions),
        "rejected": record.rejected.total,
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
    genesis, head = ledger.genesis, ledger.head
    config = ledger.config
    rounds = [_round_line(block) for block in ledger.iter_blocks(1)]
    return {
        "ledger": str(ledger.path),
        "height": head.header.height,
        "blocks": ledger.height + 1,
        "head": head.hash,
        "model_hash": head.header.model_hash,
        "genesis_time": _utc(genesis.header.time_ms),
        "difficulty": genesis.header.difficulty,
        "members": len(ledger.members),
        "miners": len(ledger.miners),
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
        ``reference`` and ``secagg`` (transcript and sum blobs, dropped clients, rejected reveals,
        refused messages, failure); for the genesis block also ``members`` and ``config``.

    Raises:
        LedgerError: No block has that height, or the block's metadata is malformed.
    """
    ledger = _open(ledger)
    if isinstance(height, bool) or not isinstance(height, int) or not 0 <= height <= ledger.height:
        raise LedgerError(f"no block at height {height!r}: this ledger holds heights 0 to {ledger.height}")
    block = ledger.block(height)
    details: dict[str, Any] = {
        "height": block.header.height,
        "hash": block.hash,
        "file": block_file_name(block),
        "header": block.header.to_dict(),
    }
    if height == 0:
        details.update(
            transactions=[], rejected=[], members=list(ledger.members), miners=list(ledger.miners), config=ledger.config
        )
        return details
    record = _record(block)
    details["transactions"] = [{**tx.to_dict(), "trust": record.trust.get(tx.client)} for tx in block.transactions]
    details["rejected"] = [dict(entry) for entry in record.rejected.sample]
    details["rejected_counts"] = dict(record.rejected.counts)
    details["rejected_total"] = record.rejected.total
    details["outcome"] = record.outcome
    details["randomness"] = record.randomness
    details["state"] = record.state
    if record.reference is not None:
        details["reference"] = record.reference
    if record.secagg is not None:
        details["secagg"] = record.secagg.to_dict()
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
    lines.append(f"outcome: {details['outcome']}; round state: {details['state'] or 'none'}")
    counts = ", ".join(f"{_printable(code)} {n}" for code, n in details["rejected_counts"].items())
    lines.append(f"rejected ({details['rejected_total']}{': ' + counts if counts else ''}; {len(details['rejected'])} listed):")
    for entry in details["rejected"]:
        lines.append(
            f"  {_printable(entry['client'][:_SHORT])}  update {_printable(entry['update_hash'][:_SHORT])}  "
            f"{_printable(entry['code'])}: {_printable(entry['reason'])}"
        )
    secagg = details.get("secagg")
    if secagg is not None:
        failure = secagg["failure"]
        lines.append(
            f"secure aggregation: transcript {secagg['transcript'][:_SHORT]}, sum {(secagg['sum'] or 'none')[:_SHORT]}, "
            f"{len(secagg['dropped'])} dropped"
            + (f"; FAILED {_printable(failure['code'])}: {_printable(failure['reason'])}" if failure else "")
        )
        lines += [f"  dropped  {_printable(client[:_SHORT])}" for client in secagg["dropped"]]
        for kind in ("rejected", "refused"):
            lines += [
                f"  {kind:<8} {_printable(client[:_SHORT])}: {_printable(reason)}" for client, reason in secagg[kind].items()
            ]
    return "\n".join(lines)
