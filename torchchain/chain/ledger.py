"""The ledger folder: one file per block, content-addressed blobs, crash-safe writes.

Layout::

    <path>/blocks/00000000-<hash>.json   one file per block: Block.to_bytes()
    <path>/blobs/<sha256>                update and model bytes, named by their SHA-256

Every file is written to a ``.tmp-`` file in the same folder, fsynced, renamed over its final
name and the folder fsynced, so after a crash a file is either whole or absent; leftover
``.tmp-`` files are deleted on :meth:`Ledger.open`. Blocks are only ever added; blobs are
named by their hash, so rewriting one is harmless.

:meth:`Ledger.append` refuses any block that :func:`torchchain.chain.verify.verify_ledger`
would refuse, so a ledger written through this class always verifies.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import re
import tempfile
from pathlib import Path
from collections.abc import Iterable
from typing import Any

from torchchain.chain.block import (
    MAX_BLOCK_BYTES,
    ZERO_HASH,
    Block,
    config_hash,
    genesis_members,
    merkle_root,
    meta_hash,
)
from torchchain.chain.pow import meets_difficulty
from torchchain.errors import LedgerError, SerializationError

__all__ = [
    "BLOBS_DIR",
    "BLOCKS_DIR",
    "MAX_BLOB_BYTES",
    "TMP_PREFIX",
    "Ledger",
    "block_file_name",
    "check_block",
    "check_genesis",
    "list_block_files",
    "read_block_file",
    "write_atomic",
]

BLOCKS_DIR = "blocks"
BLOBS_DIR = "blobs"
TMP_PREFIX = ".tmp-"
MAX_BLOB_BYTES = 512 * 1024 * 1024

_BLOCK_FILE_RE = re.compile(r"(\d{8,})-([0-9a-f]{64})\.json")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


def block_file_name(block: Block) -> str:
    """The file name of a block: ``{height:08d}-{hash}.json``."""
    return f"{block.header.height:08d}-{block.hash}.json"


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; without it a crash can lose a file that was fsynced.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that ``path`` is always absent or whole.

    Raises:
        LedgerError: The write failed (read-only folder, disk full, ...); nothing is left at
            ``path`` and no temporary file remains.
    """
    path = Path(path)
    tmp_name: str | None = None
    replaced = False
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        replaced = True
        _fsync_directory(path.parent)
    except BaseException as exc:
        leftover = path if replaced else tmp_name
        if leftover is not None:
            with contextlib.suppress(OSError):
                os.unlink(leftover)
        if isinstance(exc, OSError):
            raise LedgerError(
                f"cannot write {path}: {exc.strerror or exc}; check that the folder is writable "
                "and the disk has free space"
            ) from exc
        raise


def list_block_files(blocks_dir: Path) -> list[tuple[int, str, str]]:
    """The block files of a ``blocks/`` folder as ``(height, hash, file name)``, by height.

    Temporary ``.tmp-`` files are skipped. Heights must run 0, 1, 2, ... with one file each.

    Raises:
        LedgerError: A file name does not match the layout, a height is missing or repeated;
            ``.block`` names the offending file.
    """
    entries = []
    for name in os.listdir(blocks_dir):
        if name.startswith(TMP_PREFIX):
            continue
        match = _BLOCK_FILE_RE.fullmatch(name)
        if match is None:
            raise LedgerError("unexpected file in the blocks folder (expected <height>-<hash>.json)", block=name)
        entries.append((int(match.group(1)), match.group(2), name))
    entries.sort()
    for expected_height, (height, _, name) in enumerate(entries):
        if height != expected_height:
            reason = (
                f"a second file for height {height}"
                if height < expected_height
                else f"height {height} follows height {expected_height - 1}: block {expected_height} is missing"
            )
            raise LedgerError(reason, block=name)
    return entries


def check_genesis(block: Block) -> None:
    """Checks a genesis block on its own (no disk access).

    Raises:
        LedgerError: The block is not a well-formed genesis block (reason only, no ``.block``).
    """
    header = block.header
    if header.height != 0 or header.prev_hash != ZERO_HASH or header.round != 0:
        raise LedgerError("a genesis block has height 0, round 0 and a zero previous hash")
    if block.transactions:
        raise LedgerError("a genesis block holds no transactions")
    try:
        genesis_members(block.meta)
    except SerializationError as exc:
        raise LedgerError(str(exc)) from None
    if header.config_hash != config_hash(block.meta["config"]):
        raise LedgerError("config hash in the header does not match the genesis config")
    _check_commitments(block)


def _check_commitments(block: Block) -> None:
    header = block.header
    if not meets_difficulty(block.hash, header.difficulty):
        raise LedgerError(f"proof of work does not meet the header's difficulty of {header.difficulty} bits")
    if header.merkle_root != merkle_root([tx.tx_hash for tx in block.transactions]):
        raise LedgerError("Merkle root does not match the block's transactions")
    if header.meta_hash != meta_hash(block.meta):
        raise LedgerError("meta hash does not match the block's metadata")


def check_block(block: Block, *, prev: Block, genesis: Block, check_signatures: bool = True) -> None:
    """Checks that ``block`` may follow ``prev`` in the chain started by ``genesis`` (no disk access).

    Checks the height and hash link, the proof of work, that the difficulty and config hash
    equal the genesis ones, the Merkle root and meta hash, and for each transaction: signed by
    its client (skipped when ``check_signatures`` is false), client a genesis member, same round
    as the block, computed against ``prev``, at most one per client.

    Raises:
        LedgerError: The first failed check (reason only, no ``.block``).
    """
    header = block.header
    if header.height != prev.header.height + 1:
        raise LedgerError(f"height {header.height} does not follow height {prev.header.height}")
    if header.prev_hash != prev.hash:
        raise LedgerError(f"previous hash {header.prev_hash[:12]} is not the hash of block {prev.header.height}")
    if header.difficulty != genesis.header.difficulty:
        raise LedgerError(
            f"difficulty {header.difficulty} differs from the chain's difficulty {genesis.header.difficulty}"
        )
    if header.config_hash != genesis.header.config_hash:
        raise LedgerError("config hash differs from the genesis config hash")
    _check_commitments(block)
    members = frozenset(genesis.meta["members"])
    seen: set[str] = set()
    for i, tx in enumerate(block.transactions):
        who = f"transaction {i} (client {tx.client[:12]})"
        if tx.client not in members:
            raise LedgerError(f"{who}: client is not a member of the genesis block")
        if tx.client in seen:
            raise LedgerError(f"{who}: a second transaction from the same client in one block")
        seen.add(tx.client)
        if tx.round != header.round:
            raise LedgerError(f"{who}: round {tx.round} differs from the block's round {header.round}")
        if tx.base_hash != prev.hash:
            raise LedgerError(f"{who}: base hash {tx.base_hash[:12]} is not the previous block's hash")
        if check_signatures and not tx.has_valid_signature():
            raise LedgerError(f"{who}: signature does not match the client's public key")


class Ledger:
    """A ledger folder opened for reading and appending.

    Build one with :meth:`create` (new run) or :meth:`open` (resume, inspect). All blocks are
    kept in memory; blobs stay on disk.
    """

    def __init__(self, path: Path, blocks: list[Block]) -> None:
        """Use :meth:`create` or :meth:`open`; this constructor trusts its arguments."""
        self._path = Path(path)
        self._blocks = blocks
        self._members = tuple(blocks[0].meta["members"])

    @classmethod
    def create(cls, path: str | os.PathLike[str], genesis: Block, *, blobs: Iterable[bytes] = ()) -> Ledger:
        """Starts a ledger in ``path`` (created if missing) with ``genesis`` as block 0.

        Args:
            path: The ledger folder.
            genesis: A genesis block, e.g. from :func:`torchchain.chain.block.make_genesis`.
            blobs: Bytes to store before the genesis block, typically the initial model (the
                ledger verifies only once the genesis model blob is stored, here or with
                :meth:`put_blob`).

        Raises:
            LedgerError: The folder already holds blocks, the genesis block is malformed, or
                the folder cannot be written.
        """
        path = Path(path)
        blocks_dir = path / BLOCKS_DIR
        if blocks_dir.is_dir() and any(not n.startswith(TMP_PREFIX) for n in os.listdir(blocks_dir)):
            raise LedgerError(f"{path} already holds a ledger; open it with Ledger.open or choose an empty folder")
        try:
            check_genesis(genesis)
        except LedgerError as exc:
            raise LedgerError(exc.reason, block=block_file_name(genesis)) from None
        try:
            blocks_dir.mkdir(parents=True, exist_ok=True)
            (path / BLOBS_DIR).mkdir(exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot create the ledger folder {path}: {exc.strerror or exc}") from exc
        ledger = cls(path, [genesis])
        for data in blobs:
            ledger.put_blob(data)
        write_atomic(blocks_dir / block_file_name(genesis), genesis.to_bytes())
        return ledger

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Ledger:
        """Loads an existing ledger folder.

        Every block file is parsed strictly and must be canonical; names must match heights and
        hashes; heights run 0..h; each block links to the previous one and passes
        :func:`check_block` except for signatures (run :func:`~torchchain.chain.verify.verify_ledger`
        for a full audit, blobs included). Leftover ``.tmp-`` files are deleted.

        Raises:
            LedgerError: The folder is not a ledger or a block file is bad; ``.block`` names the
                first bad file.
        """
        path = Path(path)
        blocks_dir = path / BLOCKS_DIR
        if not blocks_dir.is_dir():
            raise LedgerError(f"{path} is not a ledger folder (no {BLOCKS_DIR}/ inside)")
        for directory in (blocks_dir, path / BLOBS_DIR):
            if directory.is_dir():
                for name in os.listdir(directory):
                    if name.startswith(TMP_PREFIX):
                        # A crash mid-write leaves these; a read-only copy of a ledger keeps them.
                        with contextlib.suppress(OSError):
                            os.unlink(directory / name)
        entries = list_block_files(blocks_dir)
        if not entries:
            raise LedgerError(f"{path} holds no genesis block")
        blocks: list[Block] = []
        for height, digest, name in entries:
            block = read_block_file(blocks_dir / name, name=name, height=height, digest=digest)
            try:
                if blocks:
                    check_block(block, prev=blocks[-1], genesis=blocks[0], check_signatures=False)
                else:
                    check_genesis(block)
            except LedgerError as exc:
                raise LedgerError(exc.reason, block=name) from None
            blocks.append(block)
        return cls(path, blocks)

    @property
    def path(self) -> Path:
        """The ledger folder."""
        return self._path

    @property
    def genesis(self) -> Block:
        """Block 0."""
        return self._blocks[0]

    @property
    def head(self) -> Block:
        """The last block."""
        return self._blocks[-1]

    @property
    def height(self) -> int:
        """The head's height (0 when only genesis exists)."""
        return self._blocks[-1].header.height

    @property
    def members(self) -> tuple[str, ...]:
        """Public keys allowed to submit updates, sorted, from the genesis block."""
        return self._members

    @property
    def config(self) -> dict[str, Any]:
        """A copy of the run configuration recorded in the genesis block."""
        return copy.deepcopy(self._blocks[0].meta["config"])

    def blocks(self) -> list[Block]:
        """All blocks, genesis first."""
        return list(self._blocks)

    def block(self, height: int) -> Block:
        """The block at ``height``.

        Raises:
            LedgerError: No block has that height.
        """
        if type(height) is not int or not 0 <= height < len(self._blocks):
            raise LedgerError(f"no block at height {height!r}; the ledger's height is {self.height}")
        return self._blocks[height]

    def blob_path(self, digest: str) -> Path:
        """Where the blob with SHA-256 ``digest`` is (or would be) stored.

        Raises:
            LedgerError: ``digest`` is not 64 lowercase hex characters.
        """
        if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
            raise LedgerError(f"a blob name is 64 lowercase hex characters, got {digest!r}")
        return self._path / BLOBS_DIR / digest

    def has_blob(self, digest: str) -> bool:
        """Whether a blob named ``digest`` is stored (its content is not checked)."""
        return self.blob_path(digest).is_file()

    def put_blob(self, data: bytes) -> str:
        """Stores ``data`` under its SHA-256 and returns the hex digest (no-op if present).

        Raises:
            LedgerError: The blob cannot be written.
        """
        data = bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.is_file():
            write_atomic(path, data)
        return digest

    def get_blob(self, digest: str, *, max_bytes: int = MAX_BLOB_BYTES) -> bytes:
        """Reads the blob named ``digest`` and checks that its content hashes to the name.

        Raises:
            LedgerError: The blob is missing, larger than ``max_bytes`` (checked before
                reading) or corrupt.
        """
        path = self.blob_path(digest)
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise LedgerError(f"blob {digest[:12]} is {size} bytes, over the limit of {max_bytes} bytes")
            data = path.read_bytes()
        except FileNotFoundError:
            raise LedgerError(f"blob {digest[:12]} is missing from {path.parent}") from None
        except OSError as exc:
            raise LedgerError(f"cannot read blob {digest[:12]}: {exc.strerror or exc}") from exc
        if hashlib.sha256(data).hexdigest() != digest:
            raise LedgerError(f"blob {digest[:12]} is corrupt: its content does not hash to its name")
        return data

    def append(self, block: Block) -> None:
        """Checks ``block`` against the head and writes it.

        Checks everything :func:`check_block` does, signatures included, and that the model
        blob and every transaction's update blob are stored (store blobs first).

        Raises:
            LedgerError: A check failed or the write failed; nothing was written and the head
                is unchanged. ``.block`` names the refused block's file name.
        """
        name = block_file_name(block)
        try:
            check_block(block, prev=self.head, genesis=self.genesis)
            if not self.has_blob(block.header.model_hash):
                raise LedgerError(f"model blob {block.header.model_hash[:12]} is not stored; put_blob it first")
            for i, tx in enumerate(block.transactions):
                if not self.has_blob(tx.update_hash):
                    raise LedgerError(
                        f"transaction {i} (client {tx.client[:12]}): update blob {tx.update_hash[:12]} "
                        "is not stored; put_blob it first"
                    )
            write_atomic(self._path / BLOCKS_DIR / name, block.to_bytes())
        except LedgerError as exc:
            raise LedgerError(exc.reason, block=name) from None
        self._blocks.append(block)

    def __repr__(self) -> str:
        return f"Ledger(path={str(self._path)!r}, height={self.height}, head={self.head.hash[:12]!r})"


def read_block_file(path: Path, *, name: str, height: int, digest: str) -> Block:
    """Reads and strictly parses one block file, checking it against its file name.

    Raises:
        LedgerError: Unreadable, oversized, malformed, non-canonical, or height/hash differ from
            the name; ``.block`` is ``name``.
    """
    try:
        size = path.stat().st_size
        if size > MAX_BLOCK_BYTES:
            raise LedgerError(f"{size} bytes is over the block limit of {MAX_BLOCK_BYTES} bytes", block=name)
        data = path.read_bytes()
    except OSError as exc:
        raise LedgerError(f"cannot read the block file: {exc.strerror or exc}", block=name) from exc
    try:
        block = Block.from_bytes(data, name=name)
    except SerializationError as exc:
        raise LedgerError(str(exc).removeprefix(f"{name}: "), block=name) from None
    if block.header.height != height:
        raise LedgerError(f"file name says height {height} but the header says {block.header.height}", block=name)
    if block.hash != digest:
        raise LedgerError(f"the block hashes to {block.hash[:12]}, not to the hash in its file name", block=name)
    if name != block_file_name(block):
        raise LedgerError(f"the file should be named {block_file_name(block)}", block=name)
    return block
