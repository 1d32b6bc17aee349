"""The ledger: signed transactions, blocks, proof of work and the on-disk chain.

This package deals in bytes, hex hashes and JSON only; it knows nothing of tensors, strategies
or configuration frameworks. ``block`` defines the records, ``crypto`` the hashes and Ed25519
signatures, ``pow`` the mining, ``fork`` the choice among competing branches, ``ledger`` the
folder a run writes, ``verify`` the audit.
"""

from __future__ import annotations

from torchchain.chain.block import (
    ZERO_HASH,
    Block,
    BlockHeader,
    GenesisInfo,
    Transaction,
    config_hash,
    genesis_info,
    make_block,
    make_genesis,
    merkle_root,
    meta_hash,
    mine_header,
)
from torchchain.chain.crypto import SigningKey, sha256_hex, verify_signature
from torchchain.chain.encoding import canonical_json, parse_json_object
from torchchain.chain.fork import BlockTree, Reorg
from torchchain.chain.ledger import AppendResult, Ledger
from torchchain.chain.pow import block_work, meets_difficulty, mine_nonce
from torchchain.chain.verify import VerifyReport, verify_ledger

__all__ = [
    "ZERO_HASH",
    "AppendResult",
    "Block",
    "BlockHeader",
    "BlockTree",
    "GenesisInfo",
    "Ledger",
    "Reorg",
    "SigningKey",
    "Transaction",
    "VerifyReport",
    "block_work",
    "canonical_json",
    "config_hash",
    "genesis_info",
    "make_block",
    "make_genesis",
    "meets_difficulty",
    "merkle_root",
    "meta_hash",
    "mine_header",
    "mine_nonce",
    "parse_json_object",
    "sha256_hex",
    "verify_ledger",
    "verify_signature",
]
