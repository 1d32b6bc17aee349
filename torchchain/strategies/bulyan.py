"""Bulyan: iterated Krum selection, then a coordinate-wise trimmed average around the median."""

from __future__ import annotations

import torch
from torch import Tensor

from torchchain.errors import ConfigError
from torchchain.strategies.base import Aggregate, Strategy
from torchchain.strategies.kernels import (
    krum_scores_from_distances,
    mean_around_median_with_shares,
    pairwise_sq_distances,
    smallest_indices,
)

__all__ = ["Bulyan"]


class Bulyan(Strategy):
    """Krum selection repeated ``theta = n - 2f`` times, then a coordinate-wise robust mean.

    El Mhamdi et al., 2018, "The Hidden Vulnerability of Distributed Learning in Byzantium".
    Stage one picks the row with the best Krum score, removes it, and repeats on the rest until
    ``theta = n - 2f`` rows are selected (with ``r`` rows left a score sums the ``r - f - 2``
    nearest neighbours, at least 0). Stage two averages, for every coordinate, the
    ``beta = theta - 2f`` selected values closest to that coordinate's median. Requires
    ``n >= 4f + 3``; sample counts are ignored (a client could claim any count).

    With fewer rows than that allows, ``effective_f(n) = min(f, (n - 3) // 4)`` (at least 0) is
    used, so a single row comes back as is. Among equal scores (common in the last selections,
    where few or no neighbours count) the lexicographically smaller row is taken, so the result
    does not depend on the order of the rows.

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
        distances = pairwise_sq_distances(updates)
        remaining = list(range(n))
        selected: list[int] = []
        while len(selected) < theta:
            index = torch.tensor(remaining)
            # Selected rows score +inf, so the pick is among the remaining rows.
            scores = torch.full((n,), float("inf"), dtype=torch.float64)
            scores[index] = krum_scores_from_distances(distances[index][:, index], f)
            best = int(smallest_indices(scores, 1, rows=updates)[0])
            selected.append(best)
            remaining.remove(best)
        chosen = torch.tensor(sorted(selected))
        update, shares = mean_around_median_with_shares(updates[chosen], theta - 2 * f)
        trust = torch.zeros(n, dtype=torch.float64)
        trust[chosen] = shares
        return Aggregate(update=update, trust=trust)
