"""The ``torchchain`` command: check, replay and read a ledger folder.

Usage::

    torchchain verify  outputs/2026-11-25/10-00-00/ledger
    torchchain audit   outputs/2026-11-25/10-00-00/ledger
    torchchain inspect outputs/2026-11-25/10-00-00/ledger [--block N] [--json]

``verify`` checks every block: proof of work, previous-hash links, Merkle root, every
transaction's signature and membership, every update blob's hash, and each block's model blob.

``audit`` does all that, then replays the training: from the genesis model, it re-aggregates
every round's accepted updates with the strategy recorded in the genesis block and checks that
the result hashes to the block's model hash. It prints one table row per round.

``inspect`` prints the chain's summary (height, head, newest model hash, strategy, one line per
round) and, with ``--block N``, block ``N`` in full with each client's contribution; ``--json``
prints the same as JSON. It reads the ledger without verifying signatures or blobs.

Exit status: 0 when all holds; 1 when a check fails or the ledger cannot be read, with the
block and the reason on stderr; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from torchchain.chain.ledger import Ledger
from torchchain.chain.verify import verify_ledger
from torchchain.errors import TorchchainError
from torchchain.ledger_summary import block_details, format_block, format_summary, ledger_summary

__all__ = ["build_parser", "main"]


def _verify(args: argparse.Namespace) -> int:
    report = verify_ledger(args.ledger)
    print(report.summary())
    return 0


def _audit(args: argparse.Namespace) -> int:
    # Imported here: replaying needs torch, Hydra and the strategies; verify and inspect do not.
    from torchchain.audit import ROUND_TABLE_HEADER, RoundReplay, audit_ledger, format_round

    printed_header = False

    def print_row(replay: RoundReplay) -> None:
        nonlocal printed_header
        if not printed_header:
            print(ROUND_TABLE_HEADER)
            printed_header = True
        print(format_round(replay), flush=True)

    report = audit_ledger(args.ledger, on_round=print_row)
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
    verify.set_defaults(handler=_verify)

    audit = commands.add_parser(
        "audit", help="verify, then replay every round's aggregation and check each block's model hash"
    )
    audit.add_argument("ledger", help="the ledger folder (a run's ledger/ folder)")
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
