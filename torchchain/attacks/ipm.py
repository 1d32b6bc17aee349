"""Inner product manipulation: send a small negative multiple of the honest mean."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torchchain.attacks.base import Attack, check_honest, check_positive, check_update

__all__ = ["IPM"]


class IPM(Attack):
    """Send ``-epsilon * mean(honest)``, so the aggregate's inner product with the true mean turns negative.

    Xie, Koyejo and Gupta (2019), "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner
    Product Manipulation", UAI. A small ``epsilon`` (0.1 in the paper) keeps the malicious
    updates close to the honest ones, which defeats median- and Krum-like rules; a large one
    (100 in the paper) overwhelms plain averaging. Omniscient: needs the round's honest updates.

    Args:
        epsilon: The multiple of the honest mean, reversed; a finite number > 0. Default ``0.1``.
    """

    name = "ipm"
    omniscient = True

    def __init__(self, *, epsilon: float = 0.1) -> None:
        super().__init__()
        self.epsilon = check_positive(self.name, "epsilon", epsilon)

    def poison_update(self, update: Tensor, *, honest: Tensor | None, generator: torch.Generator) -> Tensor:
        """Return ``-epsilon * honest.mean(0)`` (float64)."""
        honest = check_honest(self, check_update(update), honest)
        return -self.epsilon * honest.mean(dim=0)

    def describe(self) -> dict[str, Any]:
        """Return ``{"name": "ipm", "epsilon": ...}``."""
        return {"name": self.name, "epsilon": self.epsilon}
