"""Ledger retention: how many blocks keep their update blobs (``chain.keep_updates``).

Every node stores every byte of the ledger, so a long run's update blobs dominate its size. With
``chain.keep_updates=N`` (part of the protocol, recorded in genesis) a node deletes the update
blobs of a block once ``N`` newer blocks exist. Headers, transactions, model blobs and round
state always stay, so the chain still verifies, and ``audit`` replays the retained range from the
model and round state of the block before it.

The rule is what tells a pruned ledger from a tampered one: an update blob of a block at or
below ``head height - N`` may be absent (pruned); one above it must be present, and any blob that
is present must be intact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchchain.errors import ConfigError

__all__ = ["MAX_KEEP_UPDATES", "first_retained_height", "updates_kept"]

#: The largest numeric ``chain.keep_updates``.
MAX_KEEP_UPDATES = 10**7


def updates_kept(config: Mapping[str, Any]) -> int | None:
    """The ``chain.keep_updates`` of a protocol config: ``None`` for ``"all"`` (the default), else N.

    Raises:
        ConfigError: Neither ``"all"`` nor an integer in [1, :data:`MAX_KEEP_UPDATES`].
    """
    chain = config.get("chain")
    value = chain.get("keep_updates", "all") if isinstance(chain, Mapping) else "all"
    if value == "all":
        return None
    if type(value) is not int or not 1 <= value <= MAX_KEEP_UPDATES:
        raise ConfigError(
            f"chain.keep_updates must be 'all' or an integer in [1, {MAX_KEEP_UPDATES}], got {repr(value)[:40]}"
        )
    return value


def first_retained_height(head_height: int, kept: int | None) -> int:
    """The lowest round-block height whose update blobs the rule guarantees are stored (>= 1)."""
    return 1 if kept is None else max(1, head_height - kept + 1)
