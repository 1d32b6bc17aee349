"""The ``torchchain`` command: check a ledger folder.

Usage::

    torchchain verify outputs/2026-11-25/10-00-00/ledger

``verify`` checks every block: proof of work, previous-hash links, Merkle root, every
transaction's signature and membership, every update blob's hash, and each block's model blob.
It prints one line and exits 0 when all holds; otherwise it names the first bad block and the
reason on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from torchchain.chain.verify import verify_ledger
from torchchain.errors import TorchchainError

__all__ = ["main"]


def _verify(args: argparse.Namespace) -> int:
    report = verify_ledger(args.ledger)
    print(report.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchchain", description="Check a torchchain ledger.")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check proof of work, links, Merkle roots, signatures and blobs")
    verify.add_argument("ledger", help="the ledger folder (a run's ledger/ folder)")
    verify.set_defaults(handler=_verify)
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
