"""Mimic: copy one honest client's update."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torchchain.attacks.base import Attack, check_honest, check_update
from torchchain.errors import ConfigError

__all__ = ["Mimic"]


class Mimic(Attack):
    """Send an exact copy of one honest client's update, over-weighting that client's data.

    The mimic attack of Karimireddy, He and Jaggi (2022), "Byzantine-Robust Learning on
    Heterogeneous Datasets via Bucketing", ICLR. Every value it sends is a genuine honest
    update, so no outlier test can flag it; on heterogeneous data it biases the aggregate
    towards one client's distribution. Omniscient: needs the round's honest updates.

    The paper picks the mimicked client with an online heuristic (the honest client furthest
    along the direction of largest variance, estimated over warm-up rounds). This class
    keeps no state across rounds and copies a fixed row instead: ``target`` when given, else
    row 0. The runtime passes the honest rows in a fixed order, so the same client is copied
    every round it takes part, which is what makes the attack consistent.

    Args:
        target: The index of the honest row to copy, an integer >= 0, or ``None`` for row 0.
            Default ``None``.
    """

    name = "mimic"
    omniscient = True

    def __init__(self, *, target: int | None = None) -> None:
        super().__init__()
        if target is not None and (isinstance(target, bool) or not isinstance(target, int) or target < 0):
            raise ConfigError(f"mimic attack: target must be an integer >= 0 or null, got {target!r}")
        self.target = target

    def setup(self, *, num_clients: int, num_byzantine: int) -> None:
        """Record ``n`` and ``f``; check ``target`` indexes one of the ``n - f`` honest clients.

        Raises:
            ConfigError: As :meth:`Attack.setup`, or when ``target >= n - f``.
        """
        super().setup(num_clients=num_clients, num_byzantine=num_byzantine)
        honest_count = num_clients - num_byzantine
        if self.target is not None and self.target >= honest_count:
            raise ConfigError(
                f"mimic attack: target={self.target} but there are only {honest_count} honest clients "
                f"(clients={num_clients}, byzantine={num_byzantine}); pick a target below {honest_count}"
            )

    def poison_update(self, update: Tensor, *, honest: Tensor | None, generator: torch.Generator) -> Tensor:
        """Return a copy of ``honest[target]`` (row 0 when ``target`` is ``None``), float64.

        Raises:
            ValueError: If this round has no honest row ``target``.
        """
        honest = check_honest(self, check_update(update), honest)
        row = 0 if self.target is None else self.target
        if row >= honest.shape[0]:
            raise ValueError(f"mimic attack: target={row} but this round has only {honest.shape[0]} honest updates")
        return honest[row].clone()

    def describe(self) -> dict[str, Any]:
        """Return ``{"name": "mimic", "target": ...}``."""
        return {"name": self.name, "target": self.target}
