"""Sybil: flood the round with updates signed by identities that are not members."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor

from torchchain.attacks.base import Attack, Forger, check_positive
from torchchain.errors import ConfigError

__all__ = ["Sybil"]


class Sybil(Attack):
    """Each malicious client mints fresh key pairs and sends sign-flipped updates under them.

    The Sybil attack of Douceur (2002), "The Sybil Attack", IPTPS: one party poses as many to
    outvote the honest ones. In torchchain membership is fixed by the public keys listed in the
    genesis block, so every such update is rejected as ``unknown_client``, and the malicious
    client's own key sends nothing.

    This attack acts on transactions, not tensors (:attr:`forges_transactions`): :meth:`forge`
    signs ``identities`` copies of ``-scale`` times each malicious client's honest update, each
    under the identity ``sybil/<client>/<k>``; :meth:`poison_update` is never called.

    Args:
        identities: Fake identities per malicious client, an integer >= 1. Default ``3``.
        scale: The fake updates are ``-scale`` times the client's honest update. Default ``1.0``.
    """

    name = "sybil"
    forges_transactions: ClassVar[bool] = True

    def __init__(self, *, identities: int = 3, scale: float = 1.0) -> None:
        super().__init__()
        if isinstance(identities, bool) or not isinstance(identities, int) or identities < 1:
            raise ConfigError(f"sybil attack: identities must be an integer >= 1, got {identities!r}")
        self.identities = identities
        self.scale = check_positive(self.name, "scale", scale)

    def forge(self, *, malicious: Sequence[tuple[int, Mapping[str, Tensor]]], forger: Forger) -> list[object]:
        forged = []
        for index, update in malicious:
            flipped = {name: -self.scale * value for name, value in update.items()}
            forged += [forger.submit_as(f"sybil/{index}/{k}", flipped) for k in range(self.identities)]
        return forged

    def describe(self) -> dict[str, Any]:
        """Return ``{"name": "sybil", "identities": ..., "scale": ...}``."""
        return {"name": self.name, "identities": self.identities, "scale": self.scale}
