"""Replay: resubmit a transaction that was signed and accepted in an earlier round."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor

from torchchain.attacks.base import Attack, Forger

__all__ = ["Replay"]


class Replay(Attack):
    """The malicious clients resubmit earlier, genuinely signed updates instead of their own.

    Every accepted transaction and its update bytes are public in the ledger, so an attacker can
    copy another client's signed update from round ``r - 1`` and send it again in round ``r``
    (Syverson 1994, "A Taxonomy of Replay Attacks"). The signature is valid; what stops it is
    that the signed payload binds the round number and the hash of the block the update was
    computed against, so the miner rejects it as ``wrong_round``. In round 1 there is nothing
    to replay and the malicious clients stay silent.

    This attack acts on transactions, not tensors (:attr:`forges_transactions`): :meth:`forge`
    picks, for the ``i``-th malicious client of index ``c``, the earlier submission number
    ``(c + i) mod k``; :meth:`poison_update` is never called.
    """

    name = "replay"
    forges_transactions: ClassVar[bool] = True

    def forge(self, *, malicious: Sequence[tuple[int, Mapping[str, Tensor]]], forger: Forger) -> list[object]:
        earlier = list(forger.earlier_submissions())
        if not earlier:
            return []
        return [earlier[(index + i) % len(earlier)] for i, (index, _) in enumerate(malicious)]

    def describe(self) -> dict[str, Any]:
        """Return ``{"name": "replay"}``."""
        return {"name": self.name}
