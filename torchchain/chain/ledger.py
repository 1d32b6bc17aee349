"""The ledger folder: one file per block, content-addressed blobs, crash-safe writes, forks.

Layout::

    <path>/blocks/00000000-<hash>.json   one file per block: Block.to_bytes()
    <path>/blobs/<sha256>                update and model bytes, named by their SHA-256
    <path>/attestations/<hash>.json      chains with several peers: the signed attestations that
                                         committed block <hash> (torchchain.protocol.attestation)

    <path>/.lock                         held (flock) by the one process that writes

Every file is written to a ``.tmp-`` file in the same folder, fsynced, renamed over its final
name and the folder fsynced, so after a crash a file is either whole or absent. Blocks are only
ever added; blobs are named by their hash, so rewriting one is harmless.

Readers never write: :meth:`Ledger.open` reads, skips ``.tmp-`` files and changes nothing, so
``torchchain inspect`` or ``verify`` can run beside a training run. Only a writer
(:meth:`Ledger.create`, :meth:`Ledger.open_writer`) holds the ``.lock`` file, which also stops a
second writer, and only it deletes what a crash left behind.

Memory stays small however long the chain: the ledger keeps the genesis block and the headers
of the other blocks; a block's transactions and metadata are read from its file when asked for.

Several blocks may share a height (two miners, a fork): every stored block must extend another
stored block, and the ledger follows the chain with the most cumulative work
(:class:`~torchchain.chain.fork.BlockTree`). :meth:`Ledger.append` refuses any block that
:func:`torchchain.chain.verify.verify_ledger` would refuse, so a ledger written through this
class always verifies.

Every byte read from the folder is untrusted: files are read only if they are regular files
within a size limit (checked before reading), block files are parsed strictly, and any problem
raises :class:`~torchchain.errors.LedgerError` naming the file.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from torchchain.chain.block import (
    MAX_BLOCK_BYTES,
    ZERO_HASH,
    Block,
    BlockHeader,
    GenesisInfo,
    config_hash,
    genesis_info,
    merkle_root,
    meta_hash,
)
from torchchain.chain.fork import BlockTree, Reorg
from torchchain.chain.pow import meets_difficulty
from torchchain.errors import LedgerError, SerializationError

__all__ = [
    "ATTESTATIONS_DIR",
    "VOTES_DIR",
    "BLOBS_DIR",
    "BLOCKS_DIR",
    "LOCK_FILE",
    "MAX_BLOB_BYTES",
    "MAX_CLOCK_SKEW_MS",
    "TMP_PREFIX",
    "AppendResult",
    "Ledger",
    "Reorg",
    "block_file_name",
    "check_block",
    "check_genesis",
    "list_block_files",
    "load_block_tree",
    "read_block_file",
    "read_regular_file",
    "sha256_regular_file",
    "write_atomic",
]

BLOCKS_DIR = "blocks"
BLOBS_DIR = "blobs"
ATTESTATIONS_DIR = "attestations"
VOTES_DIR = "votes"
TMP_PREFIX = ".tmp-"
LOCK_FILE = ".lock"
MAX_BLOB_BYTES = 512 * 1024 * 1024
MAX_CLOCK_SKEW_MS = 2 * 60 * 60 * 1000
"""How far a block's time may lie before its parent's: miners' clocks differ, but a chain
whose time runs backwards by more than this was not mined in the order it claims."""

_BLOCK_FILE_RE = re.compile(r"(\d{8,})-([0-9a-f]{64})\.json")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_CHUNK_BYTES = 1024 * 1024

_log = logging.getLogger("torchchain.chain")


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
    """The block files of a ``blocks/`` folder as ``(height, hash, file name)``, by height then hash.

    Temporary ``.tmp-`` files are skipped. Several files may share a height (forks); whether
    they link up is :func:`load_block_tree`'s check.

    Raises:
        LedgerError: A name does not match the layout (``.block`` names it) or the folder cannot
            be listed.
    """
    try:
        names = os.listdir(blocks_dir)
    except OSError as exc:
        raise LedgerError(f"cannot list {blocks_dir}: {exc.strerror or exc}") from exc
    entries = []
    for name in names:
        if name.startswith(TMP_PREFIX):
            continue
        match = _BLOCK_FILE_RE.fullmatch(name)
        if match is None:
            raise LedgerError(
                "unexpected file in the blocks folder (expected <height>-<hash>.json)", block=_printable(name)
            )
        entries.append((int(match.group(1)), match.group(2), name))
    entries.sort()
    return entries


def _printable(name: str) -> str:
    # A hostile folder can hold names with control characters or undecodable bytes; an error
    # message must still print on any terminal.
    return name if name.isascii() and name.isprintable() else ascii(name)


@contextlib.contextmanager
def _open_regular_file(path: Path, max_bytes: int) -> Iterator[BinaryIO]:
    """Opens ``path`` for reading if it is a regular file of at most ``max_bytes`` (checked with
    ``fstat`` before any read).

    Raises:
        OSError: The file cannot be opened or read.
        LedgerError: Not a regular file or too large (reason only).
    """
    # O_NONBLOCK: opening a FIFO planted in the folder would otherwise wait for a writer forever.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        # A device such as /dev/zero reports size 0 and never ends; only regular files are read.
        if not stat.S_ISREG(info.st_mode):
            raise LedgerError(f"{path.name} is not a regular file")
        if info.st_size > max_bytes:
            raise LedgerError(f"{info.st_size} bytes is over the limit of {max_bytes} bytes")
        yield f


def read_regular_file(path: Path, *, max_bytes: int) -> bytes:
    """Reads a whole regular file, refusing it before reading if it is larger than ``max_bytes``.

    Raises:
        FileNotFoundError: Nothing is at ``path``.
        LedgerError: Not a regular file (a folder, device, FIFO), larger than ``max_bytes``
            (also if it grows while being read), or unreadable; reason only, no ``.block``.
    """
    try:
        with _open_regular_file(path, max_bytes) as f:
            # Ask for the size fstat reported (plus one byte, to notice growth), not the limit:
            # a read of the limit allocates all of it up front.
            data = f.read(os.fstat(f.fileno()).st_size + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise LedgerError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise LedgerError(f"{path.name} grew over the limit of {max_bytes} bytes while being read")
    return data


def sha256_regular_file(path: Path, *, max_bytes: int) -> str:
    """The SHA-256 (hex) of a regular file, streamed so that a large file costs no memory.

    Raises:
        FileNotFoundError: Nothing is at ``path``.
        LedgerError: As :func:`read_regular_file`.
    """
    hasher = hashlib.sha256()
    try:
        with _open_regular_file(path, max_bytes) as f:
            read = 0
            while chunk := f.read(_CHUNK_BYTES):
                read += len(chunk)
                if read > max_bytes:
                    raise LedgerError(f"{path.name} grew over the limit of {max_bytes} bytes while being read")
                hasher.update(chunk)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise LedgerError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    return hasher.hexdigest()


def check_genesis(block: Block) -> GenesisInfo:
    """Checks a genesis block on its own (no disk access) and returns what it fixes.

    Raises:
        LedgerError: The block is not a well-formed genesis block, its miner is not among the
            miners it lists, or it is not signed by that miner (reason only, no ``.block``).
    """
    header = block.header
    if header.height != 0 or header.prev_hash != ZERO_HASH or header.round != 0:
        raise LedgerError("a genesis block has height 0, round 0 and a zero previous hash")
    if block.transactions:
        raise LedgerError("a genesis block holds no transactions")
    try:
        info = genesis_info(block)
    except SerializationError as exc:
        raise LedgerError(str(exc)) from None
    if header.config_hash != config_hash(block.meta["config"]):
        raise LedgerError("config hash in the header does not match the genesis config")
    _check_commitments(block)
    _check_miner(block, info)
    return info


def _check_commitments(block: Block) -> None:
    header = block.header
    if not meets_difficulty(block.hash, header.difficulty):
        raise LedgerError(f"proof of work does not meet the header's difficulty of {header.difficulty} bits")
    if header.merkle_root != merkle_root([tx.tx_hash for tx in block.transactions]):
        raise LedgerError("Merkle root does not match the block's transactions")
    if header.meta_hash != meta_hash(block.meta):
        raise LedgerError("meta hash does not match the block's metadata")


def _check_miner(block: Block, genesis: GenesisInfo) -> None:
    miner = block.header.miner
    if miner not in genesis.miners:
        raise LedgerError(f"miner {miner[:12]} is not one of the miners the genesis block authorizes")
    if not block.has_valid_signature():
        raise LedgerError(f"the block is not signed by its miner {miner[:12]}")


def check_block(block: Block, *, prev: BlockHeader, genesis: GenesisInfo, check_signatures: bool = True) -> None:
    """Checks that ``block`` may follow ``prev`` in the chain that ``genesis`` starts (no disk access).

    Checks the height and hash link; that the round is the parent's plus one and the time is
    not earlier than the parent's by more than :data:`MAX_CLOCK_SKEW_MS`; the proof of work;
    that the difficulty and config hash equal the genesis ones; that the miner is one the
    genesis block authorizes and signed the block; the Merkle root and meta hash; and for each
    transaction: signed by its client (skipped when ``check_signatures`` is false), client a
    genesis member, same round as the block, computed against ``prev``, at most one per client.

    Raises:
        LedgerError: The first failed check (reason only, no ``.block``).
    """
    header = block.header
    prev_hash = prev.hash()
    if header.height != prev.height + 1:
        raise LedgerError(f"height {header.height} does not follow height {prev.height}")
    if header.prev_hash != prev_hash:
        raise LedgerError(f"previous hash {header.prev_hash[:12]} is not the hash of block {prev.height}")
    if header.round != prev.round + 1:
        raise LedgerError(f"round {header.round} does not follow round {prev.round}: rounds increase by one")
    if header.time_ms < prev.time_ms - MAX_CLOCK_SKEW_MS:
        raise LedgerError(
            f"time {header.time_ms} ms is {prev.time_ms - header.time_ms} ms before its parent's; "
            f"at most {MAX_CLOCK_SKEW_MS} ms of clock skew is tolerated"
        )
    if header.difficulty != genesis.difficulty:
        raise LedgerError(f"difficulty {header.difficulty} differs from the chain's difficulty {genesis.difficulty}")
    if header.config_hash != genesis.config_hash:
        raise LedgerError("config hash differs from the genesis config hash")
    _check_commitments(block)
    _check_miner(block, genesis)
    members = frozenset(genesis.members)
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
        if tx.base_hash != prev_hash:
            raise LedgerError(f"{who}: base hash {tx.base_hash[:12]} is not the previous block's hash")
        if check_signatures and not tx.has_valid_signature():
            raise LedgerError(f"{who}: signature does not match the client's public key")


def load_block_tree(
    path: str | os.PathLike[str],
    *,
    check_signatures: bool = False,
    check: Callable[[Block], None] | None = None,
) -> tuple[Block, BlockTree]:
    """Reads every block file of a ledger folder into a :class:`BlockTree`, checking each one.

    Files are taken by height, then hash. Each is read with a size limit and parsed strictly
    (:func:`read_block_file`); there must be exactly one genesis block (:func:`check_genesis`)
    and every other block must extend a block read before it and pass :func:`check_block`
    against that parent. Blocks are streamed: only the genesis block and the headers are kept,
    so memory is bounded by the largest block, not the chain's length.

    Returns:
        The genesis block and the tree of every block's header.

    Args:
        path: The ledger folder.
        check_signatures: Also check every transaction signature (slow; an audit does).
        check: Called with each block after it passed the checks above; raise
            :class:`LedgerError` to refuse it (``.block`` is filled in).

    Raises:
        LedgerError: The folder is not a ledger or a block file is bad; ``.block`` names the
            first bad file.
    """
    path = Path(path)
    blocks_dir = path / BLOCKS_DIR
    if not blocks_dir.is_dir():
        raise LedgerError(f"{path} is not a ledger folder (no {BLOCKS_DIR}/ inside)")
    entries = list_block_files(blocks_dir)
    if not entries or entries[0][0] != 0:
        raise LedgerError(f"{path} holds no genesis block (no block file for height 0)")
    geneses = [name for height, _, name in entries if height == 0]
    if len(geneses) > 1:
        raise LedgerError(
            f"{len(geneses)} block files claim height 0 ({', '.join(geneses)}); a ledger has exactly "
            "one genesis block",
            block=geneses[1],
        )

    height, digest, name = entries[0]
    genesis = read_block_file(blocks_dir / name, name=name, height=height, digest=digest)
    try:
        info = check_genesis(genesis)
        if check is not None:
            check(genesis)
    except LedgerError as exc:
        raise LedgerError(exc.reason, block=name) from None
    tree = BlockTree(genesis.header)
    # By height, so a parent is always read before its children.
    for height, digest, name in entries[1:]:
        block = read_block_file(blocks_dir / name, name=name, height=height, digest=digest)
        parent = tree.get(block.header.prev_hash)
        if parent is None:
            raise LedgerError(
                f"orphan block: no block file holds its previous block {block.header.prev_hash[:12]} "
                f"(height {height - 1})",
                block=name,
            )
        try:
            check_block(block, prev=parent, genesis=info, check_signatures=check_signatures)
            if check is not None:
                check(block)
        except LedgerError as exc:
            raise LedgerError(exc.reason, block=name) from None
        tree.add(block.header)
        del block  # only the header stays in memory
    return genesis, tree


@dataclass(frozen=True)
class AppendResult:
    """What :meth:`Ledger.append` did to the best chain.

    Attributes:
        head: Hash of the head after the append.
        switched: Whether the head moved to a different branch (then ``reorg`` says how).
            Extending the head, adding a block to a side branch that stays lighter, and
            appending a block already stored all leave it ``False``.
        reorg: The reorganisation when ``switched``, else ``None``.
    """

    head: str
    switched: bool
    reorg: Reorg | None


class Ledger:
    """A ledger folder, opened for reading (:meth:`open`) or writing (:meth:`create`,
    :meth:`open_writer`).

    The genesis block and every block's header are kept in memory; transactions and metadata
    are read from the block files when asked for (a small cache keeps the head). :attr:`head`,
    :attr:`height`, :meth:`blocks` and :meth:`block` describe the best chain (most cumulative
    work, ties to the lowest tip hash).

    A writer holds an exclusive lock on ``<path>/.lock`` until :meth:`close` (or until the
    object is collected); a reader takes no lock and never writes. Use either as a context
    manager to close it on exit.
    """

    _CACHE_SIZE = 4

    def __init__(self, path: Path, genesis: Block, tree: BlockTree, *, lock: BinaryIO | None = None) -> None:
        """Use :meth:`create`, :meth:`open` or :meth:`open_writer`; this constructor trusts its arguments."""
        self._path = Path(path)
        self._genesis = genesis
        self._info = genesis_info(genesis)
        self._tree = tree
        self._lock = lock
        self._cache: dict[str, Block] = {genesis.hash: genesis}
        # Bytes of block files and blobs: counted once by disk_bytes(), then kept up to date by
        # this object's own writes and deletions (a writer holds the lock, so nobody else writes).
        self._disk_bytes: int | None = None

    # -- opening and closing ------------------------------------------------------------------

    @staticmethod
    def _acquire_lock(path: Path) -> BinaryIO:
        try:
            lock = open(path / LOCK_FILE, "a+b")  # noqa: SIM115 - held until close()
        except OSError as exc:
            raise LedgerError(f"cannot open the lock file of {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise LedgerError(
                f"another process is writing the ledger {path} (it holds {LOCK_FILE}); "
                "wait for it to finish, or read the ledger with Ledger.open / torchchain inspect"
            ) from None
        return lock

    @staticmethod
    def _remove_leftovers(path: Path) -> None:
        for directory in (path / BLOCKS_DIR, path / BLOBS_DIR, path / ATTESTATIONS_DIR, path / VOTES_DIR):
            if directory.is_dir():
                for name in os.listdir(directory):
                    if name.startswith(TMP_PREFIX):
                        # A crash mid-write leaves these; only the lock holder may delete them.
                        with contextlib.suppress(OSError):
                            os.unlink(directory / name)

    @classmethod
    def create(cls, path: str | os.PathLike[str], genesis: Block, *, blobs: Iterable[bytes] = ()) -> Ledger:
        """Starts a ledger in ``path`` (created if missing) with ``genesis`` as block 0, for writing.

        Args:
            path: The ledger folder.
            genesis: A genesis block, e.g. from :func:`torchchain.chain.block.make_genesis`.
            blobs: Bytes to store before the genesis block, typically the initial model (the
                ledger verifies only once the genesis model blob is stored, here or with
                :meth:`put_blob`).

        Raises:
            LedgerError: The folder already holds blocks, another process writes it, the
                genesis block is malformed, or the folder cannot be written.
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
        lock = cls._acquire_lock(path)
        ledger = cls(path, genesis, BlockTree(genesis.header), lock=lock)
        try:
            cls._remove_leftovers(path)
            for data in blobs:
                ledger.put_blob(data)
            write_atomic(blocks_dir / block_file_name(genesis), genesis.to_bytes())
        except BaseException:
            ledger.close()
            raise
        return ledger

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Ledger:
        """Loads an existing ledger folder, every branch of it, for reading only.

        Every block file is read within :data:`~torchchain.chain.block.MAX_BLOCK_BYTES`, parsed
        strictly and must be canonical; names must match heights and hashes; there is exactly
        one genesis block; every other block extends a stored block and passes
        :func:`check_block` against it, except for transaction signatures (run
        :func:`~torchchain.chain.verify.verify_ledger` for a full audit, blobs included). The
        head is the tip of the chain with the most cumulative work (ties: lowest hash), so
        reopening a ledger always picks the head the appending node had.

        Nothing is written: ``.tmp-`` files of a writer at work are skipped, not deleted.

        Raises:
            LedgerError: The folder is not a ledger or a block file is bad (malformed, an
                orphan whose parent is missing, a second genesis, ...); ``.block`` names the
                first bad file.
        """
        path = Path(path)
        if not (path / BLOCKS_DIR).is_dir():
            raise LedgerError(f"{path} is not a ledger folder (no {BLOCKS_DIR}/ inside)")
        genesis, tree = load_block_tree(path)
        return cls(path, genesis, tree)

    @classmethod
    def open_writer(cls, path: str | os.PathLike[str]) -> Ledger:
        """Loads an existing ledger folder for appending (to resume a run).

        Takes the folder's lock, deletes the ``.tmp-`` files a crash left behind, then loads
        the ledger as :meth:`open` does.

        Raises:
            LedgerError: As :meth:`open`, or another process already writes the ledger.
        """
        path = Path(path)
        if not (path / BLOCKS_DIR).is_dir():
            raise LedgerError(f"{path} is not a ledger folder (no {BLOCKS_DIR}/ inside)")
        lock = cls._acquire_lock(path)
        try:
            cls._remove_leftovers(path)
            genesis, tree = load_block_tree(path)
        except BaseException:
            lock.close()
            raise
        return cls(path, genesis, tree, lock=lock)

    @property
    def writable(self) -> bool:
        """Whether this object holds the writer's lock (and may append and store blobs)."""
        return self._lock is not None and not self._lock.closed

    def close(self) -> None:
        """Releases the writer's lock (a reader has nothing to release). Idempotent."""
        if self._lock is not None and not self._lock.closed:
            self._lock.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _require_writer(self, action: str) -> None:
        if not self.writable:
            raise LedgerError(
                f"cannot {action}: {self._path} was opened for reading; use Ledger.create or Ledger.open_writer"
            )

    # -- the chain -------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The ledger folder."""
        return self._path

    @property
    def genesis(self) -> Block:
        """Block 0."""
        return self._genesis

    @property
    def genesis_info(self) -> GenesisInfo:
        """What the genesis block fixes: members, miners, config, difficulty."""
        return self._info

    @property
    def head(self) -> Block:
        """The tip of the best chain."""
        return self._load(self._tree.head_hash)

    @property
    def head_hash(self) -> str:
        """The hash of the tip of the best chain (no file read)."""
        return self._tree.head_hash

    @property
    def height(self) -> int:
        """The head's height (0 when only genesis exists)."""
        return self._tree.head.height

    @property
    def forks(self) -> int:
        """How many stored blocks are not on the best chain."""
        return len(self._tree) - (self.height + 1)

    @property
    def members(self) -> tuple[str, ...]:
        """Public keys allowed to submit updates, sorted, from the genesis block."""
        return self._info.members

    @property
    def miners(self) -> tuple[str, ...]:
        """Public keys allowed to mine blocks, sorted, from the genesis block."""
        return self._info.miners

    @property
    def config(self) -> dict[str, Any]:
        """A copy of the protocol configuration recorded in the genesis block."""
        return copy.deepcopy(dict(self._info.config))

    def header(self, block_hash: str) -> BlockHeader:
        """The header of the stored block ``block_hash`` (any branch; no file read).

        Raises:
            LedgerError: No stored block has that hash.
        """
        header = self._tree.get(block_hash) if isinstance(block_hash, str) else None
        if header is None:
            raise LedgerError(f"no block of this ledger has hash {block_hash!r}")
        return header

    def _load(self, block_hash: str) -> Block:
        cached = self._cache.get(block_hash)
        if cached is not None:
            return cached
        header = self.header(block_hash)
        name = f"{header.height:08d}-{block_hash}.json"
        block = read_block_file(self._path / BLOCKS_DIR / name, name=name, height=header.height, digest=block_hash)
        # The file may have been rewritten since the ledger was opened: the header hash matched
        # its name, so check that the body is still the one the header commits to.
        try:
            _check_commitments(block)
        except LedgerError as exc:
            raise LedgerError(f"{exc.reason} (the file changed after the ledger was opened)", block=name) from None
        if len(self._cache) >= self._CACHE_SIZE:
            # Keep genesis; drop the oldest other entry.
            oldest = next(h for h in self._cache if h != self._genesis.hash)
            del self._cache[oldest]
        self._cache[block_hash] = block
        return block

    def iter_blocks(self, start: int = 0) -> Iterator[Block]:
        """The blocks of the best chain from height ``start``, read one at a time."""
        for block_hash in self._tree.chain()[start:]:
            yield self._load(block_hash)

    def blocks(self) -> list[Block]:
        """The blocks of the best chain, genesis first (all read into memory: prefer
        :meth:`iter_blocks` for long chains)."""
        return list(self.iter_blocks())

    def block(self, height: int) -> Block:
        """The best chain's block at ``height``.

        Raises:
            LedgerError: No block of the best chain has that height.
        """
        if type(height) is not int or not 0 <= height <= self.height:
            raise LedgerError(f"no block at height {height!r}; the ledger's height is {self.height}")
        return self._load(self._tree.hash_at(height))

    def block_by_hash(self, block_hash: str) -> Block:
        """The stored block (on any branch) whose hash is ``block_hash``.

        Raises:
            LedgerError: No stored block has that hash.
        """
        self.header(block_hash)  # raises for an unknown hash
        return self._load(block_hash)

    def on_best_chain(self, block_hash: str) -> bool:
        """Whether the stored block ``block_hash`` is on the best chain."""
        return self._tree.on_best_chain(block_hash)

    # -- blobs -----------------------------------------------------------------------------

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
            LedgerError: The ledger was opened for reading, or the blob cannot be written.
        """
        self._require_writer("store a blob")
        data = bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.is_file():
            write_atomic(path, data)
            self._count(len(data))
        return digest

    def delete_blob(self, digest: str) -> int:
        """Deletes the blob named ``digest`` (a retention rule pruning old updates); returns the
        bytes freed (0 when it was not there). Blocks are never deleted.

        Raises:
            LedgerError: The ledger was opened for reading, or the file cannot be removed.
        """
        self._require_writer("delete a blob")
        path = self.blob_path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise LedgerError(f"cannot delete blob {digest[:12]}: {exc.strerror or exc}") from exc
        self._count(-size)
        return size

    def disk_bytes(self) -> int:
        """The bytes of every block file and blob stored. The folder is walked once; after that a
        writer keeps the figure up to date with its own writes and deletions."""
        if self._disk_bytes is None or not self.writable:
            total = 0
            for folder in (BLOCKS_DIR, BLOBS_DIR):
                with os.scandir(self._path / folder) as entries:
                    total += sum(
                        e.stat(follow_symlinks=False).st_size for e in entries if e.is_file(follow_symlinks=False)
                    )
            self._disk_bytes = total
        return self._disk_bytes

    def _count(self, delta: int) -> None:
        if self._disk_bytes is not None:
            self._disk_bytes += delta

    def get_blob(self, digest: str, *, max_bytes: int = MAX_BLOB_BYTES) -> bytes:
        """Reads the blob named ``digest`` and checks that its content hashes to the name.

        Raises:
            LedgerError: The blob is missing, not a regular file, larger than ``max_bytes``
                (checked before reading) or corrupt.
        """
        path = self.blob_path(digest)
        try:
            data = read_regular_file(path, max_bytes=max_bytes)
        except FileNotFoundError:
            raise LedgerError(f"blob {digest[:12]} is missing from {path.parent}") from None
        except LedgerError as exc:
            raise LedgerError(f"blob {digest[:12]}: {exc.reason}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise LedgerError(f"blob {digest[:12]} is corrupt: its content does not hash to its name")
        return data

    # -- attestations ----------------------------------------------------------------------

    # Signed records kept beside a block (attestations, votes): one canonical JSON file per block,
    # self-authenticating (each entry is signed), so they are not chained into any hash.

    def _sidecar_path(self, folder: str, block_hash: str) -> Path:
        if not isinstance(block_hash, str) or not _DIGEST_RE.fullmatch(block_hash):
            raise LedgerError(f"a block hash is 64 lowercase hex characters, got {block_hash!r}")
        return self._path / folder / f"{block_hash}.json"

    def _put_sidecar(self, folder: str, what: str, block_hash: str, data: bytes) -> None:
        self._require_writer(f"store {what}")
        path = self._sidecar_path(folder, block_hash)
        try:
            path.parent.mkdir(exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"cannot create {path.parent}: {exc.strerror or exc}") from exc
        write_atomic(path, bytes(data))

    def _get_sidecar(self, folder: str, what: str, block_hash: str, max_bytes: int) -> bytes:
        path = self._sidecar_path(folder, block_hash)
        try:
            return read_regular_file(path, max_bytes=max_bytes)
        except FileNotFoundError:
            raise LedgerError(f"no {what} are stored for block {block_hash[:12]} ({path})") from None
        except LedgerError as exc:
            raise LedgerError(f"{what} of block {block_hash[:12]}: {exc.reason}") from None

    def attestations_path(self, block_hash: str) -> Path:
        """Where the attestations of block ``block_hash`` are (or would be) stored.

        Raises:
            LedgerError: ``block_hash`` is not 64 lowercase hex characters.
        """
        return self._sidecar_path(ATTESTATIONS_DIR, block_hash)

    def put_attestations(self, block_hash: str, data: bytes) -> None:
        """Stores the attestations of block ``block_hash`` (written atomically, replacing any
        earlier file). Store them before appending the block: a crash in between leaves a
        harmless file about a block that does not exist, never a block without them.

        Raises:
            LedgerError: The ledger was opened for reading, or the file cannot be written.
        """
        self._put_sidecar(ATTESTATIONS_DIR, "attestations", block_hash, data)

    def get_attestations(self, block_hash: str, *, max_bytes: int) -> bytes:
        """The stored attestations of block ``block_hash``, as bytes (parse them with
        :func:`torchchain.protocol.attestation.decode_attestation_set`).

        Raises:
            LedgerError: None are stored, or the file is not a regular file, is larger than
                ``max_bytes`` (checked before reading) or cannot be read.
        """
        return self._get_sidecar(ATTESTATIONS_DIR, "attestations", block_hash, max_bytes)

    def votes_path(self, block_hash: str) -> Path:
        """Where the votes on the updates of block ``block_hash`` are (or would be) stored
        (``validation=vote``).

        Raises:
            LedgerError: ``block_hash`` is not 64 lowercase hex characters.
        """
        return self._sidecar_path(VOTES_DIR, block_hash)

    def put_votes(self, block_hash: str, data: bytes) -> None:
        """Stores the votes of block ``block_hash``, as :meth:`put_attestations` stores
        attestations (before the block is appended).

        Raises:
            LedgerError: The ledger was opened for reading, or the file cannot be written.
        """
        self._put_sidecar(VOTES_DIR, "votes", block_hash, data)

    def get_votes(self, block_hash: str, *, max_bytes: int) -> bytes:
        """The stored votes of block ``block_hash`` (parse them with
        :func:`torchchain.protocol.vote.decode_vote_set`).

        Raises:
            LedgerError: None are stored, or the file is not a regular file, is larger than
                ``max_bytes`` (checked before reading) or cannot be read.
        """
        return self._get_sidecar(VOTES_DIR, "votes", block_hash, max_bytes)

    # -- appending -------------------------------------------------------------------------

    def append(self, block: Block, *, blobs: Iterable[str] = ()) -> AppendResult:
        """Checks ``block`` against its parent, writes it, and moves the head if its branch is best.

        The parent may be any stored block, not only the head: a block on a side branch is
        stored, and becomes the head once its branch has the most cumulative work (ties: lowest
        tip hash). A switch of branch is logged at WARNING on the ``torchchain.chain`` logger
        and returned as a :class:`~torchchain.chain.fork.Reorg`. Appending a block that is
        already stored changes nothing.

        Checks everything :func:`check_block` does, signatures included, and that the model
        blob, every transaction's update blob and every digest in ``blobs`` (other blobs the
        block refers to) are stored (store blobs first).

        Returns:
            The head after the append and whether it switched branch.

        Raises:
            LedgerError: The ledger was opened for reading, the parent is unknown, a check
                failed or the write failed; nothing was written and the head is unchanged.
                ``.block`` names the refused block's file.
        """
        self._require_writer("append a block")
        name = block_file_name(block)
        block_hash = block.hash
        if block_hash in self._tree:
            return AppendResult(head=self.head_hash, switched=False, reorg=None)
        try:
            parent = self._tree.get(block.header.prev_hash)
            if parent is None:
                raise LedgerError(
                    f"previous hash {block.header.prev_hash[:12]} is not the hash of a block of this ledger; "
                    "append its parent first"
                )
            check_block(block, prev=parent, genesis=self._info)
            if not self.has_blob(block.header.model_hash):
                raise LedgerError(f"model blob {block.header.model_hash[:12]} is not stored; put_blob it first")
            for i, tx in enumerate(block.transactions):
                if not self.has_blob(tx.update_hash):
                    raise LedgerError(
                        f"transaction {i} (client {tx.client[:12]}): update blob {tx.update_hash[:12]} "
                        "is not stored; put_blob it first"
                    )
            for digest in blobs:
                if not self.has_blob(digest):
                    raise LedgerError(f"blob {str(digest)[:12]} the block refers to is not stored; put_blob it first")
            data = block.to_bytes()
            write_atomic(self._path / BLOCKS_DIR / name, data)
            self._count(len(data))
        except LedgerError as exc:
            raise LedgerError(exc.reason, block=name) from None
        reorg = self._tree.add(block.header)
        if reorg is not None:
            _log.warning(
                "reorg: head moved from %s to %s (height %d); %d block(s) abandoned after common ancestor %s",
                reorg.old_head[:12],
                reorg.new_head[:12],
                self.height,
                reorg.depth,
                reorg.common_ancestor[:12],
            )
        return AppendResult(head=self.head_hash, switched=reorg is not None, reorg=reorg)

    def __repr__(self) -> str:
        mode = "writer" if self.writable else "reader"
        return f"Ledger(path={str(self._path)!r}, height={self.height}, head={self.head_hash[:12]!r}, {mode})"


def read_block_file(path: Path, *, name: str, height: int, digest: str) -> Block:
    """Reads and strictly parses one block file, checking it against its file name.

    Raises:
        LedgerError: Missing, not a regular file, over
            :data:`~torchchain.chain.block.MAX_BLOCK_BYTES` (checked before reading),
            malformed, non-canonical, or height/hash differ from the name; ``.block`` is
            ``name``.
    """
    try:
        data = read_regular_file(path, max_bytes=MAX_BLOCK_BYTES)
    except FileNotFoundError:
        raise LedgerError("the block file disappeared while the ledger was read", block=name) from None
    except LedgerError as exc:
        raise LedgerError(f"cannot read the block file: {exc.reason}", block=name) from None
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
