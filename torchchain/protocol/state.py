"""Round state: what carries from one round to the next and changes the aggregate.

A strategy's state (centered clipping's centre, ...) is committed in the chain: after each block
it is serialized to canonical safetensors bytes, stored as a blob, and its hash recorded in the
block (``state`` in the round record). A validator holding block ``r`` and its blobs can check
block ``r + 1`` with nothing else, and the state only advances when a block is committed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from torchchain.errors import ConfigError, SerializationError
from torchchain.updates.serialize import update_from_bytes, update_to_bytes

__all__ = ["MAX_STATE_BYTES", "decode_state", "encode_state"]

#: The largest state blob a node reads.
MAX_STATE_BYTES = 1 << 30


def encode_state(state: Mapping[str, Any]) -> bytes | None:
    """Canonical bytes of a strategy's ``state_dict()``, or ``None`` when it is empty.

    Raises:
        ConfigError: A value is not a tensor: the chain stores tensor state only.
    """
    if not state:
        return None
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ConfigError(
                f"strategy state {key!r} is a {type(value).__name__}; state carried in the chain must be tensors"
            )
    return update_to_bytes({k: v.detach().cpu() for k, v in state.items()})


def decode_state(data: bytes | None) -> dict[str, torch.Tensor]:
    """The state :func:`encode_state` wrote (``{}`` for ``None``).

    Raises:
        SerializationError: The bytes are not canonical safetensors.
    """
    if data is None:
        return {}
    state = update_from_bytes(data, max_bytes=MAX_STATE_BYTES)
    if update_to_bytes(state) != bytes(data):
        raise SerializationError("the state blob is not in canonical form")
    return state
