"""Coordinate-wise median."""

from __future__ import annotations

from torch import Tensor

from torchchain.strategies.base import Aggregate, Strategy
from torchchain.strategies.kernels import trimmed_mean_with_shares

__all__ = ["Median"]


class Median(Strategy):
    """The coordinate-wise median of the updates.

    Yin et al., 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates".
    Each coordinate of the result is the median of that coordinate over the clients; for an even
    number of clients it is the mean of the two middle values. Robust while fewer than half of
    the clients are Byzantine; it needs no ``f`` and ignores the sample counts (a client could
    claim any count).

    Trust: the share of coordinates for which a row was the median element (each of the two
    middle rows counts one half for even ``n``; among equal values the lower row index counts
    as the smaller).

    Args:
        f: Byzantine clients assumed; only pre-aggregation steps use it. Default ``None``.
        pre: Pre-aggregation steps; default none.
    """

    name = "median"

    def aggregate(self, updates: Tensor, weights: Tensor) -> Aggregate:
        n = updates.shape[0]
        update, shares = trimmed_mean_with_shares(updates, (n - 1) // 2)
        return Aggregate(update=update, trust=shares)
