"""Run checkpoints: the private state a resumed run needs that the ledger does not hold.

The ledger holds every global model and the round state (the strategy's state), so the only
state to save is what is private to this process: the attack's state, and each client's SGD
momentum and codec error-feedback residual. The clients' state lives in one file per client
(:mod:`torchchain.runtime.client_state`); the checkpoint records which file holds each one (the
manifest). Everything else (partitions, keys, random streams) is derived from the seed.

A checkpoint is keyed by the hash of the block it belongs with. It is written *before* that
block is appended, and its parent's is kept, so whatever instant a crash hits, the checkpoint
matching the ledger's last whole block is on disk. Files are safetensors (tensors, plus JSON
text in the header's metadata): nothing is unpickled on resume.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from torchchain.chain.ledger import TMP_PREFIX, write_atomic
from torchchain.errors import ConfigError
from torchchain.runtime.client_state import ClientStates

__all__ = ["checkpoint_path", "load_checkpoint", "save_checkpoint"]

_NAME = re.compile(r"^block_([0-9a-f]{64})\.safetensors$")


def checkpoint_path(folder: str | Path, block_hash: str) -> Path:
    """Where the checkpoint that goes with block ``block_hash`` lives inside ``folder``."""
    return Path(folder) / f"block_{block_hash}.safetensors"


def _split(state: Mapping[str, Any], prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Move the tensor values of ``state`` into ``tensors`` under ``prefix``; return the rest (JSON)."""
    rest = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[f"{prefix}{key}"] = value.detach().cpu().contiguous()
        else:
            rest[key] = value
    return rest


def save_checkpoint(
    folder: str | Path,
    block_hash: str,
    *,
    parent: str,
    attack_state: Mapping[str, Any],
    clients: ClientStates | None = None,
) -> Path:
    """Write the checkpoint of block ``block_hash`` atomically; delete all but it and its parent's.

    Args:
        folder: The run's checkpoint folder (created if missing).
        block_hash: The block about to be appended.
        parent: The hash of its parent, whose checkpoint is kept until the block is on disk.
        attack_state: ``attack.state_dict()``: tensors, and JSON-serializable values.
        clients: The clients' states: those trained since the last checkpoint are written to
            their files first (:meth:`ClientStates.commit`), and the files neither this
            checkpoint nor its parent's names are deleted after it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    parent_files: dict[str, str] = {}
    files: dict[str, str] = {}
    if clients is not None:
        parent_files = clients.manifest()
        clients.commit(block_hash)
        files = clients.manifest()
    meta = {"block": block_hash, "attack": _split(attack_state, "attack/", tensors), "clients": files}
    path = checkpoint_path(folder, block_hash)
    write_atomic(path, st_save(tensors, metadata={"torchchain": json.dumps(meta, sort_keys=True)}))
    for old in folder.iterdir():
        match = _NAME.match(old.name)
        # Older checkpoints are never needed again; temporary files are what a crash left behind.
        if (match and match.group(1) not in (block_hash, parent)) or old.name.startswith(TMP_PREFIX):
            old.unlink(missing_ok=True)
    if clients is not None:
        clients.prune([parent_files, files])
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``{"block": str, "attack": dict, "clients": {index: file name}}``; the manifest goes to
        :meth:`ClientStates.load_manifest`.

    Raises:
        ConfigError: if the file is missing or malformed; the message names it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"]["torchchain"])
        state: dict[str, Any] = {"block": str(meta["block"]), "attack": dict(meta["attack"]), "clients": dict(meta["clients"])}
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot resume: checkpoint {path} is missing or malformed ({exc})") from None
    for name, tensor in tensors.items():
        kind, _, rest = name.partition("/")
        if kind != "attack":
            raise ConfigError(f"cannot resume: checkpoint {path} holds an unexpected tensor {name!r}")
        state[kind][rest] = tensor
    return state
