"""Sign flipping: send the opposite of the honest update."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torchchain.attacks.base import Attack, check_positive, check_update

__all__ = ["SignFlip"]


class SignFlip(Attack):
    """Send ``-scale * update``: the client's own honest update, reversed and scaled.

    The sign-flipping Byzantine behaviour of Allen-Zhu, Ebrahimian, Li and Alistarh (2021),
    "Byzantine-Resilient Non-Convex Stochastic Gradient Descent", ICLR.

    Args:
        scale: How much the reversed update is stretched, a finite number > 0. Default ``1.0``.
    """

    name = "signflip"

    def __init__(self, *, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = check_positive(self.name, "scale", scale)

    def poison_update(self, update: Tensor, *, honest: Tensor | None, generator: torch.Generator) -> Tensor:
        """Return ``-scale * update`` (float64)."""
        return -self.scale * check_update(update)

    def describe(self) -> dict[str, Any]:
        """Return ``{"name": "signflip", "scale": ...}``."""
        return {"name": self.name, "scale": self.scale}
