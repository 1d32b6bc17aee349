"""Each client's private state between the rounds it trains in, kept on disk.

A client's private state is its SGD momentum buffers and its codec error-feedback residual:
one model's worth of tensors each. Held in memory for every registered client, 1,000 clients of
a 0.42M-parameter CNN with momentum would keep 1.7 GB alive although only the clients sampled
this round touch theirs. So a :class:`ClientStates` with a folder loads a client's state just
before it trains (:meth:`~ClientStates.checkout`) and, once the round's block is decided, writes
it to one safetensors file per client and drops it from memory (:meth:`~ClientStates.commit`).
Memory then grows with the clients per round, not with the registered clients.

The files are named after the block they go with (``client<index>_<hash prefix>.safetensors``)
and never overwritten in place: the run checkpoint of each block
(:mod:`torchchain.runtime.checkpoint`) records which file holds each client's state after that
block (its *manifest*), and a file stays on disk while the manifest of the newest block or of
its parent names it. Whenever a crash
hits, the files that the checkpoint of the ledger's last whole block names are therefore there.
Files are read with safetensors (nothing unpickled) and checked against the names they should
hold.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from torchchain.chain.ledger import TMP_PREFIX, write_atomic
from torchchain.errors import ConfigError
from torchchain.runtime.client import Client

__all__ = ["ClientStates"]

_FILE = re.compile(r"^client(\d+)_[0-9a-f]{16}\.safetensors$")
_KINDS = ("momentum", "residual")


def _file_name(index: int, block_hash: str) -> str:
    return f"client{index}_{block_hash[:16]}.safetensors"


class ClientStates:
    """Where the clients' momentum buffers and codec residuals live between their rounds.

    Args:
        folder: Folder for one file per client that holds state (created when first needed).
            ``None`` keeps every client's state in memory, in the :class:`Client` objects, and
            saves nothing (a peer run without checkpoints).
    """

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = None if folder is None else Path(folder)
        # Client index -> the file that holds its state after the newest committed block.
        self._files: dict[int, str] = {}
        self._live: dict[int, Client] = {}

    def manifest(self) -> dict[str, str]:
        """Which file holds each client's state after the newest committed block (JSON-ready)."""
        return {str(index): name for index, name in sorted(self._files.items())}

    def load_manifest(self, manifest: Mapping[str, object], *, clients: Collection[int]) -> None:
        """Take up the manifest saved with the head block's checkpoint (after a restart).

        Args:
            manifest: The checkpoint's ``clients`` entry.
            clients: The indices of this process's clients.

        Raises:
            ConfigError: An entry names no client of this run or no file of the expected form.
        """
        files: dict[int, str] = {}
        for key, name in manifest.items():
            match = _FILE.match(name) if isinstance(name, str) else None
            if not (key.isdigit() and match and int(match.group(1)) == int(key) and int(key) in clients):
                raise ConfigError(f"cannot resume: the checkpoint names no valid client state file for {key!r} ({name!r})")
            files[int(key)] = name
        self._files = files
        self._live = {}

    def checkout(self, clients: Iterable[Client]) -> None:
        """Load the state of ``clients``, which are about to train, into them.

        A client with no file starts from empty state (its first round, or no momentum and no
        residual-keeping codec).

        Raises:
            ConfigError: A file the manifest names is missing, malformed, or holds tensors of
                another client or kind.
        """
        if self.folder is None:
            return
        for client in clients:
            if client.index in self._live:
                continue
            momentum: dict[str, torch.Tensor] = {}
            residual: dict[str, torch.Tensor] = {}
            name = self._files.get(client.index)
            if name is not None:
                path = self.folder / name
                try:
                    tensors = st_load(path.read_bytes())
                except (OSError, SafetensorError) as exc:
                    raise ConfigError(f"cannot resume: client state {path} is missing or malformed ({exc})") from None
                for key, tensor in tensors.items():
                    kind, _, param = key.partition("/")
                    if kind not in _KINDS or not param:
                        raise ConfigError(f"cannot resume: client state {path} holds an unexpected tensor {key!r}")
                    (momentum if kind == "momentum" else residual)[param] = tensor
            client.momentum_buffers = momentum
            client.codec_residual = residual
            self._live[client.index] = client

    def commit(self, block_hash: str) -> None:
        """Write the state of the clients checked out since the last commit and release it.

        Call once the round's block (``block_hash``) is decided and before its checkpoint is
        written, so the files are on disk before any checkpoint names them. A client whose
        state is empty gets no file.
        """
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for index, client in sorted(self._live.items()):
            tensors = {f"momentum/{k}": v.detach().cpu().contiguous() for k, v in (client.momentum_buffers or {}).items()}
            tensors.update({f"residual/{k}": v.detach().cpu().contiguous() for k, v in client.codec_residual.items()})
            if tensors:
                name = _file_name(index, block_hash)
                write_atomic(self.folder / name, st_save(tensors))
                self._files[index] = name
            else:
                self._files.pop(index, None)
            # Released: the next checkout reads the file back.
            client.momentum_buffers = {}
            client.codec_residual = {}
        self._live = {}

    def prune(self, keep: Sequence[Mapping[str, str]]) -> None:
        """Delete the files no manifest in ``keep`` names (and what a crash left half-written).

        Args:
            keep: The manifests still needed: the newest block's and its parent's.
        """
        if self.folder is None or not self.folder.is_dir():
            return
        wanted = {name for manifest in keep for name in manifest.values()}
        for path in self.folder.iterdir():
            if (_FILE.match(path.name) and path.name not in wanted) or path.name.startswith(TMP_PREFIX):
                path.unlink(missing_ok=True)
