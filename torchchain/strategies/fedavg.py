"""Federated averaging: the sample-weighted mean."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torchchain.strategies.base import WEIGHTINGS, Aggregate, PreAggregator, Strategy, require_choice
from torchchain.strategies.kernels import sorted_sum, weighted_mean

__all__ = ["FedAvg"]


class FedAvg(Strategy):
    """The mean of the updates, weighted by each client's sample count by default.

    McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from Decentralized
    Data". Not robust: a single malicious client can move the result anywhere, whichever the
    weighting. The sample counts are claimed by the clients, so with ``weights="samples"`` (the
    paper's average, the default) a client can also take the whole weight by claiming a huge
    count; ``weights="equal"`` averages the rows alike. ``f`` is not used by the rule itself
    (only by pre-aggregation steps that need it).

    Trust: the normalised weights, which are exactly the coefficients of the mean.

    Args:
        weights: ``"samples"`` (default) to weight by the sample counts, or ``"equal"`` to
            ignore them.
        f: Byzantine clients assumed; default ``None`` (the run's byzantine count).
        pre: Pre-aggregation steps; default none.

    Raises:
        ConfigError: If ``weights`` is not one of the two values.
    """

    name = "fedavg"

    def __init__(
        self, *, weights: str = "samples", f: int | None = None, pre: Sequence[PreAggregator | str] = ()
    ) -> None:
        super().__init__(f=f, pre=pre)
        self.weights = require_choice(self.name, "weights", weights, WEIGHTINGS)

    def aggregate(self, updates: Tensor, weights: Tensor) -> Aggregate:
        if self.weights == "equal":
            weights = torch.ones_like(weights)
        return Aggregate(update=weighted_mean(updates, weights), trust=weights / sorted_sum(weights))

    def hyperparameters(self) -> dict[str, Any]:
        return {"weights": self.weights}
