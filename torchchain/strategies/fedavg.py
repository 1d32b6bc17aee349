"""Federated averaging: the sample-weighted mean."""

from __future__ import annotations

from torch import Tensor

from torchchain.strategies.base import Aggregate, Strategy
from torchchain.strategies.kernels import sorted_sum, weighted_mean

__all__ = ["FedAvg"]


class FedAvg(Strategy):
    """The mean of the updates weighted by each client's sample count.

    McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from Decentralized
    Data". Not robust: a single malicious client can move the result anywhere. ``f`` is not used
    by the rule itself (only by pre-aggregation steps that need it).

    Trust: the normalised sample counts, which are exactly the coefficients of the mean.

    Args:
        f: Byzantine clients assumed; default ``None`` (the run's byzantine count).
        pre: Pre-aggregation steps; default none.
    """

    name = "fedavg"

    def aggregate(self, updates: Tensor, weights: Tensor) -> Aggregate:
        return Aggregate(update=weighted_mean(updates, weights), trust=weights / sorted_sum(weights))
