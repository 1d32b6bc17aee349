"""The honest baseline: malicious clients behave like everyone else."""

from __future__ import annotations

from typing import Any

from torchchain.attacks.base import Attack

__all__ = ["NoAttack"]


class NoAttack(Attack):
    """No attack: data and updates pass through unchanged.

    Selecting it keeps the federation's configuration (how many clients are marked byzantine)
    while their behaviour stays honest, the baseline every attack is compared with.
    """

    name = "none"

    def describe(self) -> dict[str, Any]:
        """Return ``{"name": "none"}``."""
        return {"name": self.name}
