"""The ``torchchain`` command: check, replay and read a ledger folder.

Usage::

    torchchain verify  outputs/2026-11-25/10-00-00/ledger [--expect-head HASH]
    torchchain audit   outputs/2026-11-25/10-00-00/ledger [--expect-head HASH] [--trust my_pkg.MyStrategy] [--from N]
    torchchain inspect outputs/2026-11-25/10-00-00/ledger [--block N] [--json]

``verify`` checks every block: proof of work at the genesis difficulty, previous-hash links,
rounds and times, the miner's signature and authorization, Merkle root, every transaction's
signature and membership, and every blob a block refers to (updates, model, round state,
reference update).

``audit`` does all that, then replays the training with the rules recorded in the genesis block:
every accepted update must pass the submission check, and every round's model hash, trust
weights and round state must be reproduced. It prints one table row per round. The recorded
strategy is built only if it is built in or named with ``--trust``; nothing else the ledger
names is imported.

Both compare the head with ``--expect-head``, or else with the ``head`` of a ``summary.json``
beside the ledger folder (a run's own), so a truncated or swapped chain is caught.

``inspect`` prints the chain's summary (height, head, newest model hash, strategy, one line per
round) and, with ``--block N``, block ``N`` in full with each client's contribution; ``--json``
prints the same as JSON. It reads the ledger without verifying signatures or blobs.

Exit status: 0 when all holds; 1 when a check fails or the ledger cannot be read, with the
block and the reason on stderr; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from torchchain.chain.encoding import parse_json_object
from torchchain.chain.ledger import Ledger, read_regular_file
from torchchain.errors import LedgerError, SerializationError, TorchchainError
from torchchain.protocol.inspect import block_details, format_block, format_summary, ledger_summary
from torchchain.protocol.verify import verify_ledger

__all__ = ["build_parser", "main"]

_HASH = re.compile(r"[0-9a-f]{64}")
_MAX_SUMMARY_BYTES = 1 << 20


def _expected_head(args: argparse.Namespace) -> str | None:
    """``--expect-head``, or the ``head`` of the run's ``summary.json`` beside the ledger, or ``None``."""
    if args.expect_head is not None:
        if not _HASH.fullmatch(args.expect_head):
            raise LedgerError(f"--expect-head must be a block hash (64 lowercase hex characters), got {args.expect_head!r}")
        return args.expect_head
    summary = Path(args.ledger).parent / "summary.json"
    if not summary.is_file():
        return None
    try:
        head = parse_json_object(read_regular_file(summary, max_bytes=_MAX_SUMMARY_BYTES), what=str(summary), max_bytes=_MAX_SUMMARY_BYTES).get("head")
    except (LedgerError, SerializationError) as exc:
        raise LedgerError(f"cannot read the head from {summary}: {exc}; pass --expect-head instead") from None
    if not isinstance(head, str) or not _HASH.fullmatch(head):
        raise LedgerError(f"{summary} records no valid 'head'; pass --expect-head instead")
    print(f"checking the head against {summary}")
    return head


def _verify(args: argparse.Namespace) -> int:
    report = verify_ledger(args.ledger, expect_head=_expected_head(args))
    print(report.summary())
    return 0


def _audit(args: argparse.Namespace) -> int:
    # Imported here: replaying needs torch and the strategies; verify and inspect do not.
    from torchchain.protocol.audit import ROUND_TABLE_HEADER, RoundReplay, audit_ledger, format_round

    printed_header = False

    def print_row(replay: RoundReplay) -> None:
        nonlocal printed_header
        if not printed_header:
            print(ROUND_TABLE_HEADER)
            printed_header = True
        print(format_round(replay), flush=True)

    report = audit_ledger(
        args.ledger, trust=args.trust, expect_head=_expected_head(args), start=args.start, on_round=print_row
    )
    print(report.summary())
    return 0


def _inspect(args: argparse.Namespace) -> int:
    ledger = Ledger.open(args.ledger)
    summary = ledger_summary(ledger)
    details = block_details(ledger, args.block) if args.block is not None else None
    if args.json:
        if details is not None:
            summary["block"] = details
        print(json.dumps(summary, indent=2))
        return 0
    print(format_summary(summary))
    if details is not None:
        print()
        print(format_block(details))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``torchchain`` command."""
    parser = argparse.ArgumentParser(prog="torchchain", description="Check, replay and read a torchchain ledger.")
    commands = parser.add_subparsers(dest="command", required=True)

    verify = commands.add_parser("verify", help="check proof of work, links, Merkle roots, signatures and blobs")
    verify.add_argument("ledger", help="the ledger folder (a run's ledger/ folder)")
    verify.add_argument("--expect-head", metavar="HASH", help="the head block hash the ledger must end at")
    verify.set_defaults(handler=_verify)

    audit = commands.add_parser(
        "audit", help="verify, then replay every round's aggregation and check each block's model hash"
    )
    audit.add_argument("ledger", help="the ledger folder (a run's ledger/ folder)")
    audit.add_argument("--expect-head", metavar="HASH", help="the head block hash the ledger must end at")
    audit.add_argument(
        "--trust", action="append", default=[], metavar="PKG.CLASS",
        help="a strategy class outside torchchain that you trust to be imported (repeatable)",
    )
    audit.add_argument(
        "--from", dest="start", type=int, default=1, metavar="N",
        help="replay from height N, starting from the model and round state block N-1 commits to",
    )
    audit.set_defaults(handler=_audit)

    inspect = commands.add_parser("inspect", help="print the chain's summary, or one block in full")
    inspect.add_argument("ledger", help="the ledger folder (a run's ledger/ folder)")
    inspect.add_argument(
        "--block", type=int, metavar="N", help="also print block N (its height; 0 is genesis) in full"
    )
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.set_defaults(handler=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``torchchain`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except TorchchainError as exc:
        print(f"torchchain {args.command}: FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
