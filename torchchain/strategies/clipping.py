"""Clipping: bound the norm of every update before aggregation."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torchchain.strategies.base import MAX_NORM, PreAggregator, require_number
from torchchain.strategies.kernels import clip_to_norm

__all__ = ["Clipping"]


class Clipping(PreAggregator):
    """Rescale every row whose L2 norm exceeds ``c`` to norm ``c``; leave the others.

    Static norm clipping, the common first line of defence against scaled (boosted) updates;
    it bounds how far any single update can move an average. Sample counts pass through.

    Mixing: the identity (each row still stands for its own client).

    Args:
        c: The largest norm kept, in ``(0, MAX_NORM]``; default 1.0.

    Raises:
        ConfigError: If ``c`` is out of range.
    """

    name = "clipping"

    def __init__(self, *, c: float = 1.0) -> None:
        self.c = require_number(self.name, "the norm bound c", c, minimum=0.0, maximum=MAX_NORM, include_minimum=False)

    def __call__(
        self, updates: Tensor, weights: Tensor, *, f: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        n = updates.shape[0]
        return clip_to_norm(updates, self.c), weights.clone(), torch.eye(n, dtype=torch.float64)

    def hyperparameters(self) -> dict[str, Any]:
        return {"c": self.c}
