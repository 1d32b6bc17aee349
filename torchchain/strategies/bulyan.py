"""Bulyan: iterated Krum selection, then a coordinate-wise trimmed average around the median."""

from __future__ import annotations

import torch
from torch import Tensor

from torchchain.errors import ConfigError
from torchchain.strategies.base import Aggregate, Strategy
from torchchain.strategies.distance_bounds import iterated_krum_order
from torchchain.strategies.kernels import mean_around_median_with_shares

__all__ = ["Bulyan"]


class Bulyan(Strategy):
    """Krum selection repeated ``theta = n - 2f`` times, then a coordinate-wise robust mean.

    El Mhamdi et al., 2018, "The Hidden Vulnerability of Distributed Learning in Byzantium".
    Stage one picks the row with the best Krum score, removes it, and repeats on the rest until
    ``theta = n - 2f`` rows are selected. Stage two averages, for every coordinate, the
    ``beta = theta - 2f`` selected values closest to that coordinate's median. Requires
    ``n >= 4f + 3``; sample counts are ignored (a client could claim any count).

    With ``r`` rows left, Krum's score sums the ``r - f - 2`` nearest neighbours, which falls to
    ``f - 1`` at the last pick (always ``r = n - theta + 1 = 2f + 1``): for ``f = 1`` every score
    would be 0, and for ``f = 2`` the two rows of the closest pair would always tie, so the pick
    would depend on the row order rather than on the rows. Each score therefore sums
    ``max(r - f - 2, 2)`` neighbours (at most ``r - 1``): Krum's count while ``r >= f + 4``, and
    at the last picks the row with the smallest summed distance to its two nearest remaining
    rows (see :func:`~torchchain.strategies.kernels.iterated_krum_selection`). Among equal scores
    the lower row index (client-key order) wins, never the row content.
    The picks are those of the exact, fixed-order distances, decided from rounding bounds on a
    Gram matrix where they separate the rows
    (:func:`~torchchain.strategies.distance_bounds.iterated_krum_order`).

    With fewer rows than that allows, ``effective_f(n) = min(f, (n - 3) // 4)`` (at least 0) is
    used, so a single row comes back as is.

    Trust: the share of kept (coordinate, value) slots each row filled in stage two (0 for rows
    stage one did not select).

    Args:
        f: Byzantine clients assumed; default ``None`` (the run's byzantine count).
        pre: Pre-aggregation steps; default none.
    """

    name = "bulyan"

    def max_f(self, n: int) -> int:
        return (n - 3) // 4

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        if n < 4 * f + 3:
            raise ConfigError(f"bulyan needs n >= 4f+3 clients, got n={n}, f={f}: lower byzantine or raise clients")

    def aggregate(self, updates: Tensor, weights: Tensor) -> Aggregate:
        n = updates.shape[0]
        f = self.effective_f(n)
        theta = n - 2 * f
        selected = iterated_krum_order(updates, f, theta)
        chosen = torch.sort(selected).values
        update, shares = mean_around_median_with_shares(updates[chosen], theta - 2 * f)
        trust = torch.zeros(n, dtype=torch.float64)
        trust[chosen] = shares
        return Aggregate(update=update, trust=trust)
