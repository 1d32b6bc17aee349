"""Gaussian noise in place of the update."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from torchchain.attacks.base import Attack, check_update
from torchchain.errors import ConfigError

__all__ = ["Gaussian"]


class Gaussian(Attack):
    """Send a vector of independent ``N(0, std^2)`` coordinates, ignoring the honest update.

    The Gaussian Byzantine vectors of Blanchard, El Mhamdi, Guerraoui and Stainer (2017),
    "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS.
    The noise is drawn from the generator passed to :meth:`poison_update`, so the same
    generator state gives the same vector.

    Args:
        std: The standard deviation of every coordinate, a finite number >= 0. Default ``1.0``.
    """

    name = "gaussian"

    def __init__(self, *, std: float = 1.0) -> None:
        super().__init__()
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) or std < 0:
            raise ConfigError(f"gaussian attack: std must be a finite number >= 0, got {std!r}")
        self.std = float(std)

    def poison_update(self, update: Tensor, *, honest: Tensor | None, generator: torch.Generator) -> Tensor:
        """Return ``std * z`` with ``z`` standard normal, of the shape of ``update`` (float64)."""
        update = check_update(update)
        noise = torch.randn(update.shape, generator=generator, dtype=torch.float64, device=generator.device)
        return (self.std * noise).to(update.device)

    def describe(self) -> dict[str, Any]:
        """Return ``{"name": "gaussian", "std": ...}``."""
        return {"name": self.name, "std": self.std}
